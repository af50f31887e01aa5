//! A real Chromium, headless, driven over the DevTools protocol for the console's tests: pages
//! are loaded, clicked and typed into with the browser's own input events, read with
//! JavaScript, and photographed. Chromium is found on PATH (`chromium`, as Debian installs it,
//! or `WASAGA_CHROMIUM`); a test that needs it fails, saying how to install it, when it is
//! missing.

use base64::Engine;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The browser binary: `WASAGA_CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("WASAGA_CHROMIUM") {
        return PathBuf::from(path);
    }
    let on_path = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    };
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(on_path)
        .unwrap_or_else(|| {
            panic!(
                "the console's tests need Chromium: `apt-get install -y chromium` (scripts/test does it as root), or set WASAGA_CHROMIUM to a Chrome or Chromium binary"
            )
        })
}

/// A headless Chromium with one page, killed when dropped.
pub struct Browser {
    child: Child,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: TempDir,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts the browser with a fresh profile (no cookies) and attaches to its page.
    pub fn start() -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "wasaga-chromium-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&profile).expect("browser profile dir");
        let mut child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--window-size=1400,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium().display()));
        let port = devtools_port(&mut child);
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let page_url = loop {
            let listed = crate::support::agent()
                .get(&format!("http://127.0.0.1:{port}/json/list"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Vec<Value>>().ok());
            if let Some(url) = listed.and_then(|targets| {
                targets
                    .into_iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            }) {
                break url;
            }
            assert!(
                Instant::now() < deadline,
                "Chromium shows no page to attach to"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let (page, _) = tungstenite::connect(page_url.as_str()).expect("attach to the page");
        if let MaybeTlsStream::Plain(stream) = page.get_ref() {
            stream
                .set_read_timeout(Some(COMMAND_TIMEOUT))
                .expect("read timeout");
        }
        let mut browser = Browser {
            child,
            page,
            next_id: 0,
            _profile: TempDir(profile),
        };
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser
    }

    /// Sends a DevTools command and waits for its answer (events in between are dropped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(Message::text(message.to_string()))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "{method}: no answer");
            let text = match self.page.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(e) => panic!("{method}: the browser's socket failed: {e}"),
            };
            let answer: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            if answer["id"] == id {
                if let Some(error) = answer.get("error") {
                    panic!("{method} failed: {error}");
                }
                return answer["result"].clone();
            }
        }
    }

    /// Loads `url` and waits until the document has loaded.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        );
    }

    /// The value of `expression` (awaited if it is a promise), as JSON.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `condition` (JavaScript) is true, or panics with what the page shows.
    pub fn wait_for(&mut self, condition: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(&format!("Boolean({condition})")) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let shown =
                    self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''");
                panic!("waited {timeout:?} for `{condition}`; the page shows:\n{shown}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the first element `selector` matches, with the mouse, at its middle.
    pub fn click(&mut self, selector: &str) {
        let at = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2]; }})()"
        ));
        let (x, y) = match (at[0].as_f64(), at[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => panic!("nothing to click at `{selector}`"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// Empties the input `selector`, clicks into it and types `text` there.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        self.eval(&format!("document.querySelector({selector:?}).value = ''"));
        self.click(selector);
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// Saves what the page shows as a PNG at `path`.
    pub fn screenshot(&mut self, path: &Path) {
        self.eval("window.scrollTo(0, 0)");
        let shot = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

/// Reads Chromium's stderr until it says where DevTools listens; returns the port.
fn devtools_port(child: &mut Child) -> u16 {
    let stderr = child.stderr.take().expect("piped stderr");
    let (found, port) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut said = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ws://") {
                let port = url
                    .split_once('/')
                    .and_then(|(address, _)| address.rsplit_once(':'))
                    .and_then(|(_, port)| port.parse::<u16>().ok());
                // The loop reads on, so that the browser never blocks on a full pipe.
                let _ = found.send(port.ok_or(line.clone()));
            } else {
                said.push_str(&line);
                said.push('\n');
            }
        }
        let _ = found.send(Err(said));
    });
    match port.recv_timeout(COMMAND_TIMEOUT) {
        Ok(Ok(port)) => port,
        Ok(Err(said)) => panic!("Chromium did not start DevTools:\n{said}"),
        Err(_) => panic!("Chromium did not say where DevTools listens within {COMMAND_TIMEOUT:?}"),
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}
