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

/// A private PostgreSQL 15 cluster (initdb + pg_ctl from PATH). PostgreSQL refuses to run as
/// root, so as root the cluster belongs to the `wasaga-pg` user, created if missing.
pub struct Postgres {
    pub port: u16,
    dir: std::path::PathBuf,
}

const POSTGRES_USER: &str = "wasaga-pg";

/// Whether this process runs as root (PostgreSQL refuses to); as root, makes sure the user
/// the clusters run as exists.
fn root_with_postgres_user() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false);
        if root {
            let exists = Command::new("id")
                .arg(POSTGRES_USER)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !exists {
                let made = Command::new("useradd")
                    .args(["-m", "-s", "/bin/sh", POSTGRES_USER])
                    .status();
                assert!(
                    made.map(|s| s.success()).unwrap_or(false),
                    "cannot create the {POSTGRES_USER} user"
                );
            }
        }
        root
    })
}

fn as_postgres_user(program: &str) -> Command {
    if root_with_postgres_user() {
        let mut command = Command::new("runuser");
        command.args(["-u", POSTGRES_USER, "--", program]);
        command
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wasaga-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        if root_with_postgres_user() {
            let owned = Command::new("chown")
                .args(["-R", POSTGRES_USER])
                .arg(&dir)
                .status();
            assert!(
                owned.map(|s| s.success()).unwrap_or(false),
                "cannot chown {}",
                dir.display()
            );
        }
        let data = dir.join("data");
        let initdb = as_postgres_user("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run initdb ({e}): PostgreSQL 15's initdb and pg_ctl must be on PATH")
            });
        assert!(initdb.success(), "initdb failed in {}", dir.display());
        let postgres = Postgres { port, dir };
        postgres.pg_ctl_start();
        postgres
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_prepared_transactions=64 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let started = as_postgres_user("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "start", "-o", &options])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(
            started.success(),
            "pg_ctl start failed; see {}",
            self.dir.join("log").display()
        );
        wait_until_listening(self.port, "PostgreSQL");
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (as a crash would); [`Postgres::restart`] brings it back.
    pub fn kill(&mut self) {
        let _ = as_postgres_user("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn restart(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP link to `127.0.0.1:upstream` that delivers everything `delay` late in each
/// direction, as the network between two data centres would: the far host of a test.
pub struct SlowLink {
    pub port: u16,
}

impl SlowLink {
    pub fn start(upstream: u16, delay: std::time::Duration) -> SlowLink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (client_in, server_in) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                late(client_in, server, delay);
                late(server_in, client, delay);
            }
        });
        SlowLink { port }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
fn late(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: std::time::Duration) {
    use std::io::{Read, Write};
    let (chunks, arrived) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if chunks
                        .send((std::time::Instant::now(), buffer[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (read_at, chunk) in arrived {
            std::thread::sleep(
                (read_at + delay).saturating_duration_since(std::time::Instant::now()),
            );
            if to.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
