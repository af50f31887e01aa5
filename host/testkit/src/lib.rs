//! What the host's tests share, for the tests of any layer (a dev-dependency only): real
//! services started privately on free loopback ports ([`services`]), a scratch directory per
//! test, and a single-threaded runtime. It depends on no wasaga crate, so the lower layers'
//! tests use it without compiling wasmtime.

pub mod services;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A current-thread tokio runtime with timers and I/O, for a test to block on.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A directory of one test's own, removed when dropped, with the path of a SQLite database in
/// it.
pub struct Scratch {
    pub dir: PathBuf,
    pub db: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "wasaga-test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        let db = dir.join("wasaga.db");
        Scratch { dir, db }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
