//! Shared helpers for integration tests: start the built `keygate` binary as
//! a child process on 127.0.0.1 and talk to it over real sockets.

#![allow(dead_code)]

pub mod tools;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Path of the binary under test, built by cargo for integration tests.
pub const KEYGATE: &str = env!("CARGO_BIN_EXE_keygate");

/// Keys used by tests. Every test checks that none of them reaches a log.
pub const KEY_A: &str = "test-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const KEY_B: &str = "test-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbb";
pub const KEY_C: &str = "test-key-cccccccccccccccccccccccccccc";

/// Temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "keygate-test-{name}-{}-{unique}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Running keygate process.
pub struct Keygate {
    pub child: Child,
    pub auth: SocketAddr,
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
}

/// Default flags for tests: ephemeral ports and fast polling.
pub const FAST_POLL: &[&str] = &["--poll-interval", "200ms", "--settle-delay", "50ms"];

impl Keygate {
    /// Starts keygate with `--key-file key_file`, ephemeral ports and `args`,
    /// and waits for its start-up log line.
    pub fn start(key_file: &Path, args: &[&str]) -> Keygate {
        let mut all = vec!["--key-file", key_file.to_str().unwrap()];
        all.extend_from_slice(args);
        Keygate::start_with(&all, &[])
    }

    /// Starts keygate with exactly these arguments and extra environment.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Keygate {
        Keygate::spawn(Keygate::command(Command::new(KEYGATE), args, env))
    }

    /// Completes `command`, which runs keygate directly or through a wrapper
    /// such as `prlimit`, with ephemeral ports unless `args` set them, debug
    /// logging, piped stderr, `args` and extra environment.
    pub fn command(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Command {
        if !args.iter().any(|arg| arg.starts_with("--listen")) {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.iter().any(|arg| arg.starts_with("--admin-listen")) {
            command.args(["--admin-listen", "127.0.0.1:0"]);
        }
        command
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }

    /// Spawns a prepared command whose stderr is piped, and waits for start-up.
    pub fn spawn(mut command: Command) -> Keygate {
        let mut child = command.spawn().expect("spawn keygate");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (started_tx, started_rx) = std::sync::mpsc::channel();

        let log_writer = Arc::clone(&log);
        thread::spawn(move || {
            let mut started_tx = Some(started_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" started in ") {
                    if let Some(tx) = started_tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });

        let line = match started_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("keygate did not start; log:\n{}", log.lock().unwrap());
            }
        };
        let auth = address_after(&line, "auth on ").expect("auth address in start-up line");
        let admin = address_after(&line, "admin on ");
        Keygate {
            child,
            auth,
            admin,
            log,
        }
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener enabled")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything keygate has logged so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.logs().contains(needle))
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Asserts that no test key appears in the log.
    pub fn assert_no_key_in_logs(&self) {
        let logs = self.logs();
        for key in [KEY_A, KEY_B, KEY_C] {
            assert!(!logs.contains(key), "a key reached the log:\n{logs}");
        }
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let start = line.find(marker)? + marker.len();
    let rest = &line[start..];
    let end = rest.find([',', ';']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Polls `condition` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Connects with a 5 s read and write timeout.
///
/// NOTE: while the hostile suite ran beside other suites on a loaded
/// machine, connects to keygate's loopback listener were refused twice.
/// The cause was not found, nor whether keygate was running at the time.
/// One retry after 100 ms keeps such a refusal from failing a test; a
/// keygate that has stopped still fails `Keygate::assert_serving`.
pub fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address)
        .or_else(|error| {
            if error.kind() != std::io::ErrorKind::ConnectionRefused {
                return Err(error);
            }
            thread::sleep(Duration::from_millis(100));
            TcpStream::connect(address)
        })
        .expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Reads one response from `stream`. `head_request` means no body follows.
pub fn read_response(stream: &mut impl Read, head_request: bool) -> Option<Response> {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 1];
    while !buffer.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buffer.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&buffer).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|line| !line.is_empty())
        .filter_map(|line| {
            line.split_once(':')
                .map(|(name, value)| (name.to_string(), value.trim().to_string()))
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; if head_request { 0 } else { length }];
    stream.read_exact(&mut body).ok()?;
    Some(Response {
        status,
        headers,
        body,
    })
}

/// Sends raw bytes on a new connection and reads one response.
pub fn exchange(address: SocketAddr, raw: &[u8]) -> Option<Response> {
    let mut stream = connect(address);
    stream.write_all(raw).ok()?;
    read_response(&mut stream, raw.starts_with(b"HEAD "))
}

/// Sends `GET /` with an optional bearer key and returns the status.
pub fn status_with_key(address: SocketAddr, key: Option<&str>) -> u16 {
    let authorization = key
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    let raw = format!("GET / HTTP/1.1\r\nHost: test\r\n{authorization}Connection: close\r\n\r\n");
    exchange(address, raw.as_bytes()).map_or(0, |response| response.status)
}

/// Returns whether a request with `key` gets `status` within `timeout`.
pub fn eventually_status(
    address: SocketAddr,
    key: Option<&str>,
    status: u16,
    timeout: Duration,
) -> bool {
    wait_until(timeout, || status_with_key(address, key) == status)
}

/// Writes a key file with the given keys, one per line.
pub fn write_keys(path: &Path, keys: &[&str]) {
    let mut text = String::new();
    for key in keys {
        text.push_str(key);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write key file");
}

/// Runs `curl` with `args` and returns (HTTP status, stdout).
pub fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "10",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .expect("run curl (install it with apt-get install curl)");
    let status = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (status, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Returns the resident set size of process `pid` in KiB, from `VmRSS` in `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Returns the number of threads of process `pid`.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read task directory")
        .count()
}

/// Counts the threads of process `pid` whose name starts with `prefix`. Linux
/// keeps the first 15 bytes of a thread name, so `keygate-auth-worker`
/// reads as `keygate-auth-wo`.
pub fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read task directory")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// Returns the number of open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fd directory")
        .count()
}

/// Reads from `stream` until the peer closes it and returns what arrived,
/// or `None` when the connection is still open after the read timeout. A
/// reset counts as a close.
pub fn read_until_close(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Some(received),
            Ok(read) => received.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(received);
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

impl Keygate {
    /// Asserts that the process is still running and that a request with a
    /// valid key still gets `200`.
    pub fn assert_serving(&mut self) {
        if let Some(status) = self.child.try_wait().expect("query child status") {
            panic!("keygate exited with {status}; log:\n{}", self.logs());
        }
        assert_eq!(
            status_with_key(self.auth, Some(KEY_A)),
            200,
            "a normal request with a valid key was not allowed"
        );
        assert!(
            self.child.try_wait().expect("query child status").is_none(),
            "keygate exited after serving a normal request"
        );
    }
}
