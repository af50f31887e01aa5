//! The web console at `/ui`: three static files embedded in the binary, and the sign-in that
//! turns the server's token into a session cookie. The console does everything through the
//! `/v1` API, authorized by that cookie instead of the bearer header; so that another site
//! cannot make a signed-in browser act, every request other than GET needs the CSRF token (a
//! second, readable cookie, sent back as the `X-Wasaga-CSRF` header), and a request whose
//! `Origin` is not this server is refused.
//!
//! A session is `<expiry ms>.<HMAC-SHA256 of it keyed by the token>`: nothing is stored on
//! the server, a session dies when it expires or the token changes, and the cookie never
//! holds the token itself.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a console session lasts.
pub const SESSION_MS: u64 = 12 * 3_600 * 1_000;
/// The session cookie (HttpOnly).
pub const SESSION_COOKIE: &str = "wasaga_session";
/// The CSRF cookie (readable by the page, which sends it back as [`CSRF_HEADER`]).
pub const CSRF_COOKIE: &str = "wasaga_csrf";
/// The header a cookie-authorized request other than GET must carry.
pub const CSRF_HEADER: &str = "x-wasaga-csrf";
/// Wrong sign-ins refused per second at most, from all clients together; past that they are
/// answered 429 at once. A token of 16 characters or more is not guessed at ten a second.
pub const SIGN_IN_REFUSALS_PER_S: u32 = 10;
/// Sessions signed out that this server remembers (until they would have expired anyway).
pub const REVOKED_SESSIONS_MAX: usize = 10_000;

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

/// What a page of the console may load and run: only this server's own files.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Why a request that carried a session was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No session, or a forged or expired one.
    NoSession,
    /// A session, but a request other than GET without the matching CSRF header, or from
    /// another origin.
    Forgery(&'static str),
}

fn mac(token: &str, message: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new session valid until `expires_ms`.
pub fn session(token: &str, expires_ms: u64) -> String {
    format!(
        "{expires_ms}.{}",
        mac(token, &format!("session.{expires_ms}"))
    )
}

/// The CSRF token that goes with `session`.
pub fn csrf(token: &str, session: &str) -> String {
    mac(token, &format!("csrf.{session}"))
}

/// Whether `value` is a session this server issued that has not expired at `now_ms`.
pub fn valid_session(token: &str, value: &str, now_ms: u64) -> bool {
    let Some((expires, _)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires_ms) = expires.parse::<u64>() else {
        return false;
    };
    expires_ms > now_ms
        && crate::responses::same_secret(session(token, expires_ms).as_bytes(), value.as_bytes())
}

/// Every value of cookie `name` in `headers` (another site on the same host may have set one
/// of the same name: cookies are not kept apart by port).
pub fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Checks a request that carries no bearer token against the console's session: the first
/// session cookie that is valid and was not signed out.
pub fn check_session(
    token: &str,
    method: &Method,
    headers: &HeaderMap,
    now_ms: u64,
    revoked: &Revoked,
) -> Result<(), Refused> {
    let session = cookies(headers, SESSION_COOKIE)
        .find(|s| valid_session(token, s, now_ms) && !revoked.contains(s))
        .ok_or(Refused::NoSession)?;
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(Refused::Forgery("the X-Wasaga-CSRF header is missing"))?;
    if !crate::responses::same_secret(sent.as_bytes(), csrf(token, session).as_bytes()) {
        return Err(Refused::Forgery("the X-Wasaga-CSRF header is wrong"));
    }
    if !same_origin(headers) {
        return Err(Refused::Forgery("the request comes from another origin"));
    }
    Ok(())
}

/// Whether the request's `Origin` (if it names one) is the server it was sent to: the
/// `Host` it reached, or the host a proxy in front says it was sent to (`X-Forwarded-Host`,
/// `Forwarded: host=`). A browser sends neither of those from another site's page (they
/// are not headers a page may set without the server's leave), so they cannot forge it.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(origin_host) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forwarded = text("forwarded").into_iter().flat_map(|v| {
        v.split([';', ','])
            .filter_map(|part| part.trim().strip_prefix("host="))
            .map(|host| host.trim_matches('"'))
    });
    let default_port = |host: &str| {
        host.strip_suffix(":443")
            .or_else(|| host.strip_suffix(":80"))
            .unwrap_or(host)
            .to_ascii_lowercase()
    };
    let wanted = default_port(origin_host);
    text("host")
        .into_iter()
        .chain(
            text("x-forwarded-host")
                .into_iter()
                .flat_map(|v| v.split(',')),
        )
        .map(str::trim)
        .chain(forwarded)
        .any(|host| default_port(host) == wanted)
}

/// Sign-ins refused in the current second, across all clients.
#[derive(Debug, Default)]
pub struct Refusals {
    second: std::sync::Mutex<(u64, u32)>,
}

impl Refusals {
    /// Counts one refusal; false if the second's budget is spent (answer 429 instead).
    pub fn refuse(&self) -> bool {
        let now = wasaga_core::clock::now_ms() / 1_000;
        let mut second = self.second.lock().expect("refusal count lock poisoned");
        if second.0 != now {
            *second = (now, 0);
        }
        second.1 += 1;
        second.1 <= SIGN_IN_REFUSALS_PER_S
    }
}

/// Sessions signed out on this server, until they would have expired.
#[derive(Debug, Default)]
pub struct Revoked {
    sessions: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Revoked {
    /// Refuses `session` from now on (up to `REVOKED_SESSIONS_MAX` remembered at once: past
    /// that the ones closest to expiring are forgotten first).
    pub fn revoke(&self, session: &str, now_ms: u64) {
        let Some(expires_ms) = session
            .split_once('.')
            .and_then(|(expiry, _)| expiry.parse::<u64>().ok())
        else {
            return;
        };
        let mut sessions = self
            .sessions
            .lock()
            .expect("revoked sessions lock poisoned");
        sessions.retain(|_, expiry| *expiry > now_ms);
        if sessions.len() >= REVOKED_SESSIONS_MAX
            && let Some(soonest) = sessions
                .iter()
                .min_by_key(|(_, expiry)| **expiry)
                .map(|(s, _)| s.clone())
        {
            sessions.remove(&soonest);
        }
        sessions.insert(session.to_owned(), expires_ms);
    }

    pub fn contains(&self, session: &str) -> bool {
        self.sessions
            .lock()
            .expect("revoked sessions lock poisoned")
            .contains_key(session)
    }
}

/// The response to a sign-in with the right token: the session and CSRF cookies.
pub fn signed_in(token: &str, now_ms: u64) -> Response {
    let session = session(token, now_ms + SESSION_MS);
    let csrf = csrf(token, &session);
    let max_age = SESSION_MS / 1_000;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    for cookie in [
        format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"),
        format!("{CSRF_COOKIE}={csrf}; Path=/; SameSite=Strict; Max-Age={max_age}"),
    ] {
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("cookies are ASCII"),
        );
    }
    response
}

/// The response to a sign-out: both cookies cleared.
pub fn signed_out() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        response.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_str(&format!("{name}=; Path=/; SameSite=Strict; Max-Age=0"))
                .expect("cookies are ASCII"),
        );
    }
    response
}

/// One of the console's files, by its path below `/ui/`.
pub fn asset(path: &str) -> Response {
    let (body, kind) = match path {
        "" | "index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, kind),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The files change with the binary; a browser must not keep an old page.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(cookies: &str, extra: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(cookies).expect("ascii"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        for (name, value) in extra {
            headers.insert(
                header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("ascii"),
            );
        }
        headers
    }

    #[test]
    fn a_session_is_good_until_it_expires_and_only_for_its_token() {
        let s = session("tok", 2_000);
        assert!(valid_session("tok", &s, 1_999));
        assert!(!valid_session("tok", &s, 2_000), "expired");
        assert!(!valid_session("other", &s, 1_000), "another token");
        // Moving the expiry breaks the MAC.
        let forged = s.replacen("2000", "9999", 1);
        assert!(!valid_session("tok", &forged, 1_000));
        for junk in ["", ".", "x.y", "2000", "2000.", "-1.00"] {
            assert!(!valid_session("tok", junk, 0), "{junk:?}");
        }
    }

    #[test]
    fn a_post_needs_the_csrf_header_and_the_same_origin() {
        let none = Revoked::default();
        let s = session("tok", 10_000);
        let c = csrf("tok", &s);
        let cookies = format!("a=b; {SESSION_COOKIE}={s}; {CSRF_COOKIE}={c}");
        assert_eq!(
            check_session("tok", &Method::GET, &with(&cookies, &[]), 0, &none),
            Ok(())
        );
        assert!(matches!(
            check_session("tok", &Method::POST, &with(&cookies, &[]), 0, &none),
            Err(Refused::Forgery(_))
        ));
        assert!(matches!(
            check_session(
                "tok",
                &Method::POST,
                &with(&cookies, &[(CSRF_HEADER, "00")]),
                0,
                &none
            ),
            Err(Refused::Forgery(_))
        ));
        assert_eq!(
            check_session(
                "tok",
                &Method::POST,
                &with(&cookies, &[(CSRF_HEADER, &c)]),
                0,
                &none
            ),
            Ok(())
        );
        let other_site = [
            (CSRF_HEADER, c.as_str()),
            ("origin", "https://evil.example"),
        ];
        assert!(matches!(
            check_session("tok", &Method::POST, &with(&cookies, &other_site), 0, &none),
            Err(Refused::Forgery(_))
        ));
        let same_site = [
            (CSRF_HEADER, c.as_str()),
            ("origin", "http://127.0.0.1:8080"),
        ];
        assert_eq!(
            check_session("tok", &Method::POST, &with(&cookies, &same_site), 0, &none),
            Ok(())
        );
        assert_eq!(
            check_session("tok", &Method::GET, &with("x=1", &[]), 0, &none),
            Err(Refused::NoSession)
        );
    }

    #[test]
    fn a_proxy_in_front_names_the_origin_and_a_stray_cookie_does_not_hide_the_session() {
        let none = Revoked::default();
        let s = session("tok", 10_000);
        let c = csrf("tok", &s);
        // Another page on the same host set a session cookie of its own first.
        let cookies = format!("{SESSION_COOKIE}=junk.00; {SESSION_COOKIE}={s}");
        let behind = |extra: &[(&str, &str)]| {
            let mut all = vec![(CSRF_HEADER, c.as_str()), ("origin", "https://ops.example")];
            all.extend_from_slice(extra);
            check_session("tok", &Method::POST, &with(&cookies, &all), 0, &none)
        };
        assert!(
            matches!(behind(&[]), Err(Refused::Forgery(_))),
            "Host is 127.0.0.1:8080"
        );
        assert_eq!(behind(&[("x-forwarded-host", "ops.example")]), Ok(()));
        assert_eq!(behind(&[("x-forwarded-host", "ops.example:443")]), Ok(()));
        assert_eq!(
            behind(&[("forwarded", "for=1.2.3.4;host=ops.example;proto=https")]),
            Ok(())
        );
        assert!(matches!(
            behind(&[("x-forwarded-host", "other.example")]),
            Err(Refused::Forgery(_))
        ));
    }

    #[test]
    fn a_signed_out_session_is_refused_and_wrong_sign_ins_have_a_budget() {
        let revoked = Revoked::default();
        let s = session("tok", 10_000);
        let cookies = format!("{SESSION_COOKIE}={s}");
        assert_eq!(
            check_session("tok", &Method::GET, &with(&cookies, &[]), 0, &revoked),
            Ok(())
        );
        revoked.revoke(&s, 0);
        assert_eq!(
            check_session("tok", &Method::GET, &with(&cookies, &[]), 0, &revoked),
            Err(Refused::NoSession)
        );
        let refusals = Refusals::default();
        let allowed = (0..100).filter(|_| refusals.refuse()).count();
        assert!(
            allowed >= SIGN_IN_REFUSALS_PER_S as usize
                && allowed <= 2 * SIGN_IN_REFUSALS_PER_S as usize
        );
    }

    #[test]
    fn assets_carry_a_strict_content_security_policy() {
        let page = asset("");
        assert_eq!(page.status(), StatusCode::OK);
        let csp = page
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .expect("csp");
        assert!(csp.to_str().expect("ascii").contains("script-src 'self'"));
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}
