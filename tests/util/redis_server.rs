//! Redis for the broker tests: each test starts its own `redis-server` (Debian's, installed
//! by `scripts/deps.sh`) on a free loopback port, with no persistence, and kills it
//! when dropped. A missing `redis-server` fails the test with a message; nothing skips.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

/// One running `redis-server`.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Extra `redis-server` arguments (kept for `restart`).
    extra: Vec<String>,
    /// The `requirepass` password, if any (for the test's own connections).
    password: Option<String>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with_password(None)
    }

    /// As `start`, requiring `password` (`requirepass`) when given.
    pub fn start_with_password(password: Option<&str>) -> RedisServer {
        let port = free_port();
        let extra = password.map_or(Vec::new(), |p| vec!["--requirepass".into(), p.into()]);
        let mut server = RedisServer {
            port,
            child: None,
            extra,
            password: password.map(str::to_string),
        };
        server.restart();
        server
    }

    /// Starts a server on `port` with `extra` arguments (kept for `restart`).
    pub fn start_on(port: u16, extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            port,
            child: None,
            extra,
            password: None,
        };
        server.restart();
        server
    }

    /// The `--broker` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server process is running (not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`) to the server: a stopped Redis keeps its sockets
    /// open and answers nothing.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -{signal} {pid}");
    }

    /// Starts the server again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the broker tests need Debian's \
                     redis-server; run scripts/deps.sh (scripts/test.sh does)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} never answered PING", self.port);
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut answer = [0u8; 7];
        // Without the password Redis answers -NOAUTH: it is up all the same.
        stream.read_exact(&mut answer).is_ok() && (&answer == b"+PONG\r\n" || answer[0] == b'-')
    }

    /// A client connection for checks from the test (PUBSUB, XRANGE).
    pub fn connection(&self) -> redis::Connection {
        let url = match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(WAIT))
            .expect("connect to the test's redis-server")
    }
}

/// A free loopback port (free when asked).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
