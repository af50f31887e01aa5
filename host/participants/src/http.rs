//! The `http` participant: a service reached by JSON over HTTP. A step's action `A` is
//! `POST {url}/A` with the step's payload as the body and these headers:
//!
//! | header | value |
//! |---|---|
//! | `Idempotency-Key` | the operation's key ([`crate::op_key`]), after the participant's `key_prefix`: the same on every retry and after a crash, another for its compensation |
//! | `Wasaga-Run-Id` | the run |
//! | `Wasaga-Undoes` | for a compensation, the key of the action it undoes |
//! | `Wasaga-Fencing-Tokens` | `key=token` for each lock the run holds, comma-separated |
//! | `traceparent` | the W3C trace context of the call's span (when the run's spans are exported, or the run was started with one) |
//!
//! Keys and lock names are sent percent-encoded where they hold `%`, `,`, `=` or anything but
//! visible ASCII (so `run-1/authorize` goes as it is, step `50%` of run `r` as `r/50%2525`).
//! The configured headers (secrets from the environment) are sent too, and never journaled.
//!
//! What the answer means:
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | done; the body (JSON, empty for `null`) is the step's result |
//! | 4xx but 408 and 429 | rejected; the body is the reason |
//! | 408, 429, 503, a refused connection | unavailable: retried with backoff, after `Retry-After` (at most 5 s) if given |
//! | any other 5xx | unknown: a server error may come after the work was applied; retried with the same key |
//! | no answer in `timeout_ms`, a connection lost after sending | unknown, retried with the same key |
//! | a 2xx body that is not JSON or is over `body_bytes_max` | unknown (the service answered something else than it should) |
//!
//! A service must therefore apply each key at most once and answer a repeated key as the
//! first time; answer a compensation whose action it never saw with success (and refuse that
//! action if it comes later: the compensation fenced it).
//!
//! With `two_phase = true` the service takes part in `commit_all`: `POST {url}/prepare` with
//! [`Prepare`](crate::branch::Prepare) (idempotent per `xid` and `branch`; refused once `xid` was
//! aborted), `POST {url}/commit` and `POST {url}/abort` with
//! [`Decided`](crate::branch::Decided) (a commit answers 2xx only once every listed branch is
//! committed; an abort fences `xid`), and `GET {url}/prepared`, answering
//! `{"xids": [...]}` with the transactions it holds prepared, for the in-doubt sweep.

use crate::participant::{Participant, ParticipantRequest};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use wasaga_core::BoxFuture;
use wasaga_core::event::CallFailure;

/// The longest `Retry-After` honoured before a retry; a longer one is cut to this, so that a
/// step waits at most this long per attempt (and `step_retries_max` attempts in all) before
/// it counts as unavailable and its run compensates.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);
/// How much of an unexpected body a message quotes.
const QUOTED_CHARS_MAX: usize = 300;
/// The actions a two-phase service answers itself, which no step may be named.
const TWO_PHASE_ACTIONS: [&str; 4] = ["prepare", "commit", "abort", "prepared"];

/// How one `http` participant is configured.
#[derive(Clone)]
pub struct HttpConfig {
    pub name: String,
    /// The base URL; an action is a path below it.
    pub url: String,
    pub timeout_ms: u64,
    /// Headers sent with every call, values resolved (secrets included).
    pub headers: Vec<(String, String)>,
    /// Calls in flight to this service from this host, at most.
    pub concurrency_max: u32,
    /// Calls started per second, at most (a token bucket holding a tenth of a second's worth);
    /// `None` for no limit.
    pub rate_per_s: Option<f64>,
    /// PEM certificates to trust beside the webpki roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The largest response body read.
    pub body_bytes_max: usize,
    /// Whether it takes part in two-phase commits.
    pub two_phase: bool,
    /// The actions steps may call; `None` for any path of letters, digits, `-`, `_` and `.`.
    pub actions: Option<Vec<String>>,
    /// Put before every key this service sees (`Idempotency-Key`, `Wasaga-Undoes`), so that
    /// hosts with journals of their own, whose run ids may meet, share one service apart.
    pub key_prefix: String,
}

impl HttpConfig {
    /// A config with the defaults for `name` at `url`.
    pub fn new(name: &str, url: &str) -> Self {
        HttpConfig {
            name: name.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
            timeout_ms: 5_000,
            headers: Vec::new(),
            concurrency_max: 16,
            rate_per_s: None,
            ca_pem: None,
            body_bytes_max: 1 << 20,
            two_phase: false,
            actions: None,
            key_prefix: String::new(),
        }
    }
}

/// Header values are secrets: never printed.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("concurrency_max", &self.concurrency_max)
            .field("rate_per_s", &self.rate_per_s)
            .field("body_bytes_max", &self.body_bytes_max)
            .field("two_phase", &self.two_phase)
            .field("actions", &self.actions)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// Whether `action` may name a path below the service's URL: segments of letters, digits,
/// `-`, `_` and `.`, none of them empty, `.` or `..`.
fn is_path(action: &str) -> bool {
    !action.is_empty()
        && action.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// `text` with `%`, `,`, `=` and every byte outside visible ASCII percent-encoded, fit for a
/// header value (and for a list of `key=token` pairs); [`from_header_text`] undoes it.
fn header_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b',' | b'=' | b'%') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What [`header_text`] encoded; `None` if `text` is not such an encoding.
pub fn from_header_text(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `(lock, token)` pairs of a `Wasaga-Fencing-Tokens` header.
pub fn fencing_tokens_of(header: &str) -> Option<Vec<(String, u64)>> {
    header
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, token) = pair.split_once('=')?;
            Some((from_header_text(key)?, token.parse().ok()?))
        })
        .collect()
}

/// The first characters of `body`, for a message.
fn quoted(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut quoted: String = text.chars().take(QUOTED_CHARS_MAX).collect();
    if text.chars().count() > QUOTED_CHARS_MAX {
        quoted.push('…');
    }
    quoted
}

/// `e` and its sources, which is where reqwest says what went wrong.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A token bucket: calls start at most `per_s` a second, after a burst of `burst`. A call
/// takes its token at once, possibly into debt, and waits until the debt is paid, so callers
/// go in the order they asked and none spins.
#[derive(Debug)]
struct Bucket {
    per_s: f64,
    burst: f64,
    /// Tokens left (negative: owed) and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(per_s: f64) -> Self {
        let burst = (per_s / 10.0).max(1.0);
        Bucket {
            per_s,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    async fn take(&self) {
        let wait = {
            let mut state = self.state.lock().await;
            let now = Instant::now();
            let (tokens, counted) = *state;
            let refilled =
                (tokens + now.duration_since(counted).as_secs_f64() * self.per_s).min(self.burst);
            let left = refilled - 1.0;
            *state = (left, now);
            if left >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-left / self.per_s)
        };
        tokio::time::sleep(wait).await;
    }
}

/// An answer, read to its bound.
struct Answer {
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// One service reached over HTTP.
#[derive(Debug)]
pub struct HttpParticipant {
    config: HttpConfig,
    client: reqwest::Client,
    /// Sent with every call (the configured headers).
    headers: HeaderMap,
    slots: Semaphore,
    bucket: Option<Bucket>,
}

impl HttpParticipant {
    /// Checks `config` and builds the client; connects only when called.
    pub fn new(config: HttpConfig) -> Result<Self, String> {
        let name = &config.name;
        let who = format!("participant {name}");
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| format!("{who}: url '{}' is not a URL: {e}", config.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{who}: url '{}' must be http:// or https:// with a host",
                config.url
            ));
        }
        // A URL is journaled in messages; credentials belong in headers, from the environment.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{who}: url must not hold a user or password; send credentials as a header from the environment (headers = {{ Authorization = {{ env = \"...\" }} }})"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{who}: url '{}' must not have a query or fragment: an action is a path below it",
                config.url
            ));
        }
        if config.timeout_ms == 0 || config.concurrency_max == 0 || config.body_bytes_max == 0 {
            return Err(format!(
                "{who}: timeout_ms, concurrency_max and body_bytes_max must be at least 1"
            ));
        }
        if let Some(rate) = config.rate_per_s
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!("{who}: rate_per_s must be a positive number"));
        }
        let mut headers = HeaderMap::new();
        for (header, value) in &config.headers {
            let header_name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("{who}: '{header}' is not a header name"))?;
            if header_name.as_str().starts_with("wasaga-")
                || header_name == "idempotency-key"
                || header_name == "content-type"
            {
                return Err(format!(
                    "{who}: header '{header}' is set by wasaga itself; remove it from headers"
                ));
            }
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                format!("{who}: the value of header '{header}' holds characters a header cannot")
            })?;
            value.set_sensitive(true);
            headers.insert(header_name, value);
        }
        for action in config.actions.iter().flatten() {
            if !is_path(action) {
                return Err(format!(
                    "{who}: action '{action}' must be a path of letters, digits, '-', '_' and '.'"
                ));
            }
            if config.two_phase && TWO_PHASE_ACTIONS.contains(&action.as_str()) {
                return Err(format!(
                    "{who}: '{action}' is a two-phase endpoint of this service; no step may call it"
                ));
            }
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms.min(5_000)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(config.concurrency_max as usize)
            .no_proxy()
            .user_agent(concat!("wasaga/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("{who}: ca_file holds no PEM certificate: {e}"))?;
            if certificates.is_empty() {
                return Err(format!("{who}: ca_file holds no PEM certificate"));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("{who}: cannot build its HTTP client: {}", chain(&e)))?;
        Ok(HttpParticipant {
            slots: Semaphore::new(config.concurrency_max as usize),
            bucket: config.rate_per_s.map(Bucket::new),
            client,
            headers,
            config,
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Whether the service's address takes a connection now (for a warning at start-up).
    pub async fn reachable(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.config.url).map_err(|e| e.to_string())?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let connect = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port));
        match tokio::time::timeout(Duration::from_secs(2), connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "participant {} ({}): cannot connect: {e}; calls to it will be retried and then fail (and their runs compensate) until it is up",
                self.config.name, self.config.url
            )),
            Err(_) => Err(format!(
                "participant {} ({}): no connection within 2 s; calls to it will be retried and then fail (and their runs compensate) until it is up",
                self.config.name, self.config.url
            )),
        }
    }

    /// Headers of `request`: the configured ones and wasaga's.
    fn headers_of(&self, request: &ParticipantRequest) -> Result<HeaderMap, CallFailure> {
        let mut headers = self.headers.clone();
        let mut put = |name: &'static str, value: String| {
            let value = HeaderValue::try_from(value)
                .map_err(|_| CallFailure::Rejected(format!("{name} cannot be sent as a header")))?;
            headers.insert(name, value);
            Ok::<_, CallFailure>(())
        };
        put("content-type", "application/json".to_owned())?;
        let prefix = &self.config.key_prefix;
        put(
            "idempotency-key",
            header_text(&format!("{prefix}{}", request.op_id)),
        )?;
        put("wasaga-run-id", header_text(&request.run_id))?;
        if let Some(undoes) = &request.undoes {
            put("wasaga-undoes", header_text(&format!("{prefix}{undoes}")))?;
        }
        if !request.fencing_tokens.is_empty() {
            let tokens: Vec<String> = request
                .fencing_tokens
                .iter()
                .map(|(key, token)| format!("{}={token}", header_text(key)))
                .collect();
            put("wasaga-fencing-tokens", tokens.join(","))?;
        }
        if let Some(traceparent) = &request.traceparent {
            put("traceparent", traceparent.clone())?;
        }
        Ok(headers)
    }

    /// Sends one request within the service's limits and reads its answer to the bound.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Answer, CallFailure> {
        let name = &self.config.name;
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the slots are never closed");
        if let Some(bucket) = &self.bucket {
            bucket.take().await;
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_connect() => {
                return Err(CallFailure::Unavailable(format!(
                    "participant {name}: cannot connect for {what}: {}; is the service up at {}?",
                    chain(&e),
                    self.config.url
                )));
            }
            Err(e) if e.is_timeout() => {
                return Err(CallFailure::Unknown(format!(
                    "participant {name}: no answer to {what} within timeout_ms = {}",
                    self.config.timeout_ms
                )));
            }
            Err(e) => {
                return Err(CallFailure::Unknown(format!(
                    "participant {name}: connection lost during {what}: {}",
                    chain(&e)
                )));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(RETRY_AFTER_MAX));
        let bound = self.config.body_bytes_max;
        let too_big = || {
            CallFailure::Unknown(format!(
                "participant {name}: the answer to {what} ({status}) is over body_bytes_max = {bound} bytes; raise it in the participant's config if the service is right"
            ))
        };
        if response.content_length().is_some_and(|n| n > bound as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > bound {
                        return Err(too_big());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(CallFailure::Unknown(format!(
                        "participant {name}: the answer to {what} ({status}) did not end within timeout_ms = {}",
                        self.config.timeout_ms
                    )));
                }
                Err(e) => {
                    return Err(CallFailure::Unknown(format!(
                        "participant {name}: connection lost reading the answer to {what} ({status}): {}",
                        chain(&e)
                    )));
                }
            }
        }
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// What an answer means ([the table](self)).
    async fn outcome(&self, answer: Answer, what: &str) -> Result<String, CallFailure> {
        let name = &self.config.name;
        let Answer {
            status,
            retry_after,
            body,
        } = answer;
        let code = status.as_u16();
        if status.is_success() {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok("null".to_owned());
            }
            return match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(_) => Ok(String::from_utf8(body).expect("JSON text is UTF-8")),
                Err(e) => Err(CallFailure::Unknown(format!(
                    "participant {name}: answered {what} with {status} but a body that is not JSON ({e}): {}; the service must answer JSON",
                    quoted(&body)
                ))),
            };
        }
        if matches!(code, 408 | 429 | 503) {
            if let Some(wait) = retry_after {
                // Waiting here is what makes the next attempt honour it.
                tokio::time::sleep(wait).await;
            }
            return Err(CallFailure::Unavailable(format!(
                "participant {name}: answered {what} with {status}{}",
                if body.is_empty() {
                    String::new()
                } else {
                    format!(": {}", quoted(&body))
                }
            )));
        }
        if status.is_client_error() {
            let reason = String::from_utf8_lossy(&body).trim().to_owned();
            return Err(CallFailure::Rejected(if reason.is_empty() {
                format!("participant {name}: {what} refused with {status}")
            } else {
                reason
            }));
        }
        if status.is_server_error() {
            return Err(CallFailure::Unknown(format!(
                "participant {name}: answered {what} with {status} (the work may have been applied): {}",
                quoted(&body)
            )));
        }
        Err(CallFailure::Unavailable(format!(
            "participant {name}: answered {what} with {status}, which is neither success nor refusal; check its url ({})",
            self.config.url
        )))
    }

    /// `POST {url}/{path}` with `payload` for `request`.
    async fn post(
        &self,
        path: &str,
        payload: &str,
        request: &ParticipantRequest,
    ) -> Result<String, CallFailure> {
        let what = format!("POST /{path}");
        let headers = self.headers_of(request)?;
        let built = self
            .client
            .post(format!("{}/{path}", self.config.url))
            .headers(headers)
            .body(payload.to_owned());
        let answer = self.exchange(built, &what).await?;
        self.outcome(answer, &what).await
    }
}

impl Participant for HttpParticipant {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn check_step(&self, action: &str) -> Result<(), String> {
        let name = &self.config.name;
        if let Some(actions) = &self.config.actions
            && !actions.iter().any(|a| a == action)
        {
            return Err(format!(
                "participant '{name}' has no action '{action}'; it has: {}",
                actions.join(", ")
            ));
        }
        if !is_path(action) {
            return Err(format!(
                "participant '{name}': action '{action}' must be a path of letters, digits, '-', '_' and '.'"
            ));
        }
        if self.config.two_phase && TWO_PHASE_ACTIONS.contains(&action) {
            return Err(format!(
                "participant '{name}': '{action}' is a two-phase endpoint; call it through saga.commit_all"
            ));
        }
        Ok(())
    }

    fn prepares(&self) -> bool {
        self.config.two_phase
    }

    fn call<'a>(
        &'a self,
        request: &'a ParticipantRequest,
    ) -> BoxFuture<'a, Result<String, CallFailure>> {
        Box::pin(async move {
            let call = &request.call;
            let path = match call.action.as_str() {
                "prepare" if self.config.two_phase => "prepare",
                "commit-prepared" if self.config.two_phase => "commit",
                "abort-prepared" if self.config.two_phase => "abort",
                action => {
                    self.check_step(action).map_err(CallFailure::Rejected)?;
                    action
                }
            };
            self.post(path, &call.payload, request).await
        })
    }

    fn in_doubt(&self) -> BoxFuture<'_, Result<Vec<String>, CallFailure>> {
        Box::pin(async move {
            if !self.config.two_phase {
                return Ok(Vec::new());
            }
            let what = "GET /prepared";
            let built = self
                .client
                .get(format!("{}/prepared", self.config.url))
                .headers(self.headers.clone());
            let answer = self.exchange(built, what).await?;
            let text = self
                .outcome(answer, what)
                .await
                .map_err(|e| CallFailure::Unavailable(e.reason().to_owned()))?;
            #[derive(serde::Deserialize)]
            struct Prepared {
                xids: Vec<String>,
            }
            serde_json::from_str::<Prepared>(&text)
                .map(|p| p.xids)
                .map_err(|e| {
                    CallFailure::Unavailable(format!(
                        "participant {}: GET /prepared must answer {{\"xids\": [...]}}: {e}",
                        self.config.name
                    ))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_paths_below_the_url_and_nothing_else() {
        for good in ["authorize", "v2/capture", "refund.json", "a-b_c"] {
            assert!(is_path(good), "{good}");
        }
        for bad in [
            "", "/x", "x/", "a//b", "..", "a/../b", "./a", "a?b=1", "a b", "%2e%2e",
        ] {
            assert!(!is_path(bad), "{bad}");
        }
    }

    #[test]
    fn header_text_is_visible_ascii_and_keeps_keys_apart() {
        assert_eq!(header_text("run-1/authorize"), "run-1/authorize");
        assert_eq!(header_text("r/café"), "r/caf%C3%A9");
        assert_eq!(header_text("a=b,c d"), "a%3Db%2Cc%20d");
        assert_eq!(header_text("r/50%25"), "r/50%2525");
        assert_ne!(header_text("r/a%25C3"), header_text("r/aé"));
    }

    #[test]
    fn headers_decode_to_what_was_sent() {
        for text in [
            "run-1/authorize",
            "r/café",
            "a=b,c d",
            "orders/42",
            "r/a%25C3",
        ] {
            assert_eq!(from_header_text(&header_text(text)).as_deref(), Some(text));
        }
        assert_eq!(from_header_text("%zz"), None);
        assert_eq!(from_header_text("%C3"), None, "not UTF-8");
        let tokens = vec![("orders/42".to_owned(), 7), ("a,b=c".to_owned(), 9)];
        let header = tokens
            .iter()
            .map(|(k, t)| format!("{}={t}", header_text(k)))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(fencing_tokens_of(&header), Some(tokens));
        assert_eq!(fencing_tokens_of(""), Some(Vec::new()));
        assert_eq!(fencing_tokens_of("x=notanumber"), None);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut config = HttpConfig::new("psp", "http://127.0.0.1:1/v1/");
        config.headers = vec![("Authorization".into(), "Bearer s3cret".into())];
        assert_eq!(config.url, "http://127.0.0.1:1/v1");
        let shown = format!("{config:?}");
        assert!(
            shown.contains("Authorization") && !shown.contains("s3cret"),
            "{shown}"
        );
        let participant = HttpParticipant::new(config).expect("valid");
        assert!(!format!("{participant:?}").contains("s3cret"));
    }

    #[test]
    fn bad_configs_name_the_participant_and_the_fix() {
        let bad = |edit: fn(&mut HttpConfig)| {
            let mut config = HttpConfig::new("psp", "https://psp.example/v1");
            edit(&mut config);
            HttpParticipant::new(config).expect_err("refused")
        };
        assert!(bad(|c| c.url = "ftp://x".into()).contains("must be http:// or https://"));
        assert!(bad(|c| c.url = "not a url".into()).contains("is not a URL"));
        let with_password = bad(|c| c.url = "https://admin:s3cret@psp.example/v1".into());
        assert!(
            with_password.contains("must not hold a user or password")
                && !with_password.contains("s3cret"),
            "{with_password}"
        );
        assert!(bad(|c| c.url = "https://psp.example/v1?x=1".into()).contains("query or fragment"));
        assert!(bad(|c| c.url = "https://psp.example/v1#f".into()).contains("query or fragment"));
        assert!(bad(|c| c.concurrency_max = 0).contains("at least 1"));
        assert!(bad(|c| c.rate_per_s = Some(0.0)).contains("rate_per_s"));
        assert!(
            bad(|c| c.headers = vec![("Idempotency-Key".into(), "x".into())])
                .contains("set by wasaga itself")
        );
        assert!(bad(|c| c.headers = vec![("X-Token".into(), "a\nb".into())]).contains("X-Token"));
        assert!(bad(|c| c.actions = Some(vec!["../admin".into()])).contains("must be a path"));
        assert!(
            bad(|c| {
                c.two_phase = true;
                c.actions = Some(vec!["commit".into()]);
            })
            .contains("two-phase endpoint")
        );
        assert!(bad(|c| c.ca_pem = Some(b"not pem".to_vec())).contains("ca_file"));
    }

    /// Calls start no faster than the rate after the burst, and none waits longer than its
    /// place in the queue.
    #[test]
    fn the_bucket_paces_calls_after_its_burst() {
        wasaga_testkit::rt().block_on(async {
            let bucket = std::sync::Arc::new(Bucket::new(100.0));
            let start = Instant::now();
            let takers: Vec<_> = (0..30)
                .map(|_| {
                    let bucket = bucket.clone();
                    tokio::spawn(async move {
                        bucket.take().await;
                        start.elapsed()
                    })
                })
                .collect();
            let mut started = Vec::new();
            for taker in takers {
                started.push(taker.await.expect("taker"));
            }
            started.sort();
            // Ten in the burst, then one every 10 ms: the last of thirty after 200 ms.
            assert!(started[9] < Duration::from_millis(10), "{started:?}");
            assert!(started[29] >= Duration::from_millis(195), "{started:?}");
            for (k, at) in started.iter().enumerate().skip(10) {
                let due = Duration::from_millis(10 * (k as u64 - 9)) - Duration::from_millis(2);
                assert!(*at >= due, "call {k} started at {at:?}, before {due:?}");
            }
        });
    }
}
