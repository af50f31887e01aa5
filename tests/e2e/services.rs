//! Private instances of the real services a test needs, on free loopback ports, stopped when
//! the test ends. A missing server binary fails the test loudly: nothing is skipped.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (the listener is dropped, so the port is free to bind again).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_until_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A redis-server child process.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it (./scripts/test does, as root: apt-get install -y redis-server)")
            });
        wait_until_listening(port, "redis-server");
        Redis {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A ZooKeeper server (the Debian package's zkServer.sh, which execs java) with a private data
/// directory. tickTime is short so sessions (and so locks of a paused host) expire quickly.
pub struct ZooKeeper {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

pub const ZOOKEEPER_SCRIPT: &str = "/usr/share/zookeeper/bin/zkServer.sh";

impl ZooKeeper {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        assert!(
            std::path::Path::new(ZOOKEEPER_SCRIPT).exists(),
            "{ZOOKEEPER_SCRIPT} is missing: install ZooKeeper (./scripts/test does, as root: apt-get install -y zookeeper)"
        );
        let dir = std::env::temp_dir().join(format!("wasaga-zk-{}-{port}", std::process::id()));
        // A restart on the same port keeps the data, as a real server's would: its sequence
        // numbers (the fencing tokens) must keep growing.
        std::fs::create_dir_all(dir.join("data")).expect("zk dir");
        let config = dir.join("zoo.cfg");
        std::fs::write(
            &config,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n",
                dir.join("data").display()
            ),
        )
        .expect("zoo.cfg");
        let child = Command::new(ZOOKEEPER_SCRIPT)
            .arg("start-foreground")
            .arg(&config)
            .env("ZOO_LOG_DIR", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ZooKeeper ({e})"));
        wait_until_listening(port, "ZooKeeper");
        ZooKeeper {
            port,
            dir,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("zookeeper://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
