//! systemd integration: the sd_notify messages keygate sends, checked on a
//! Unix datagram socket that replaces systemd's `NOTIFY_SOCKET`, and
//! `systemd-analyze verify` on the unit file in deploy/systemd.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tools::have_tool;
use common::*;

/// Watchdog period handed to keygate, in microseconds. keygate should ping
/// every 200 ms, half of it.
const WATCHDOG_USEC: u64 = 400_000;

/// Receiving end of the notification socket.
struct NotifySocket {
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        NotifySocket {
            socket: UnixDatagram::bind(path).expect("bind the notification socket"),
        }
    }

    fn bind_abstract(name: &str) -> NotifySocket {
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
        NotifySocket {
            socket: UnixDatagram::bind_addr(&address).expect("bind an abstract socket"),
        }
    }

    /// Receives one message, or `None` when none arrives within `timeout`.
    fn receive(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buffer = [0u8; 4096];
        let length = self.socket.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..length]).into_owned())
    }

    /// Receives messages until one that is not `WATCHDOG=1`, for at most `timeout`.
    fn receive_state(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let message = self.receive(left.max(Duration::from_millis(1)))?;
            if message != "WATCHDOG=1" {
                return Some(message);
            }
        }
    }
}

/// keygate started directly, without the harness, so that the test receives the
/// notification before it reads anything from the log. Killed on drop.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(key_file: &Path, listen: SocketAddr, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(KEYGATE);
        command
            .arg(format!("--key-file={}", key_file.display()))
            .arg(format!("--listen={listen}"))
            .arg("--admin-listen=off")
            .env("RUST_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        Daemon {
            child: command.spawn().expect("spawn keygate"),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a loopback address whose port was free a moment ago. The port is
/// chosen before keygate starts so that the test can connect as soon as
/// READY=1 arrives, without waiting for the log.
fn free_loopback_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// CLOCK_MONOTONIC in microseconds, the clock of `MONOTONIC_USEC`.
fn monotonic_micros() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// The whole notify life cycle of one process: start, watchdog, reload, stop.
#[test]
fn notify_messages_in_order() {
    let dir = TempDir::new("notify");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let notify = NotifySocket::bind(&dir.join("notify.sock"));
    let listen = free_loopback_address();
    let log = dir.join("keygate.log");
    let watchdog_usec = WATCHDOG_USEC.to_string();
    let mut daemon = Daemon::start(
        &keys,
        listen,
        &log,
        &[
            ("NOTIFY_SOCKET", dir.join("notify.sock").to_str().unwrap()),
            ("WATCHDOG_USEC", &watchdog_usec),
        ],
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    // Start-up: READY=1 is the first message, and the auth port accepts
    // connections and decides requests by the time it arrives.
    let first = notify.receive(Duration::from_secs(10));
    assert_eq!(first.as_deref(), Some("READY=1"), "log:\n{}", logs());
    assert_eq!(
        status_with_key(listen, Some(KEY_A)),
        200,
        "allow after READY=1"
    );
    assert_eq!(status_with_key(listen, None), 401, "deny after READY=1");

    // Watchdog: WATCHDOG=1 every 200 ms. The bounds allow for a busy machine:
    // at least 5 and at most 40 pings in 3 s, and no gap over 2 s.
    let window = Instant::now();
    let mut pings = 0;
    let mut last_ping = Instant::now();
    let mut longest_gap = Duration::ZERO;
    while window.elapsed() < Duration::from_secs(3) {
        let Some(message) = notify.receive(Duration::from_secs(3)) else {
            break;
        };
        assert_eq!(message, "WATCHDOG=1", "only watchdog pings while idle");
        longest_gap = longest_gap.max(last_ping.elapsed());
        last_ping = Instant::now();
        pings += 1;
    }
    eprintln!("{pings} watchdog pings in 3 s, longest gap {longest_gap:?}");
    assert!(
        pings >= 5,
        "{pings} watchdog pings in 3 s, expected about 15"
    );
    assert!(
        pings <= 40,
        "{pings} watchdog pings in 3 s, expected about 15"
    );
    assert!(
        longest_gap < Duration::from_secs(2),
        "{longest_gap:?} between watchdog pings"
    );

    // Reload: RELOADING=1 with the CLOCK_MONOTONIC time the reload began,
    // which lies between the signal and the arrival of the message.
    let before_signal = monotonic_micros();
    daemon.signal("HUP");
    let reloading = notify
        .receive_state(Duration::from_secs(10))
        .expect("a message after SIGHUP");
    let after_message = monotonic_micros();
    let mut fields = reloading.lines();
    assert_eq!(fields.next(), Some("RELOADING=1"), "{reloading:?}");
    let monotonic: u64 = fields
        .next()
        .and_then(|field| field.strip_prefix("MONOTONIC_USEC="))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(
        (before_signal..=after_message).contains(&monotonic),
        "MONOTONIC_USEC={monotonic} outside {before_signal}..={after_message}"
    );
    assert_eq!(
        notify.receive_state(Duration::from_secs(10)).as_deref(),
        Some("READY=1"),
        "READY=1 ends the reload"
    );
    assert_eq!(
        status_with_key(listen, Some(KEY_A)),
        200,
        "allow after reload"
    );

    // Stop: STOPPING=1, then a clean exit.
    daemon.signal("TERM");
    assert_eq!(
        notify.receive_state(Duration::from_secs(10)).as_deref(),
        Some("STOPPING=1")
    );
    let exited = wait_until(Duration::from_secs(10), || {
        daemon.child.try_wait().unwrap().is_some()
    });
    assert!(exited, "keygate did not exit after SIGTERM");
    assert!(daemon.child.wait().unwrap().success(), "log:\n{}", logs());
    assert!(!logs().contains(KEY_A), "a key reached the log");
}

/// An abstract socket name (`@name`) works, and a `WATCHDOG_PID` naming
/// another process turns the watchdog off, because systemd expects the
/// pings from that process.
#[test]
fn notify_abstract_socket_foreign_watchdog() {
    let dir = TempDir::new("notify-abstract");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let name = format!("keygate-test-{}", std::process::id());
    let notify = NotifySocket::bind_abstract(&name);
    let listen = free_loopback_address();
    let log = dir.join("keygate.log");
    let _daemon = Daemon::start(
        &keys,
        listen,
        &log,
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", &WATCHDOG_USEC.to_string()),
            ("WATCHDOG_PID", "1"),
        ],
    );

    let first = notify.receive(Duration::from_secs(10));
    assert_eq!(
        first.as_deref(),
        Some("READY=1"),
        "log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        notify.receive(Duration::from_millis(1500)),
        None,
        "no watchdog pings when WATCHDOG_PID is another process"
    );
}

/// `systemd-analyze verify` checks the unit file, including that the
/// ExecStart binary exists. The unit names /usr/local/bin/keygate, which is
/// not installed where the tests run, so a copy in a temporary directory
/// points at the binary cargo built.
#[test]
fn unit_file_passes_verify() {
    if !have_tool(
        "systemd-analyze",
        &["--version"],
        "install it with apt-get install systemd",
    ) {
        return;
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/keygate.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("\nExecStart=/usr/local/bin/keygate\n"));
    assert!(text.contains("\nType=notify-reload\n"));
    assert!(
        text.contains("#   ExecReload=/bin/kill -HUP $MAINPID\n"),
        "fallback for systemd < 253"
    );
    let dir = TempDir::new("unit");
    let copy = dir.join("keygate.service");
    std::fs::write(
        &copy,
        text.replace(
            "\nExecStart=/usr/local/bin/keygate\n",
            &format!("\nExecStart={KEYGATE}\n"),
        ),
    )
    .unwrap();

    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );

    // systemd before 253 does not support notify-reload and only warns about
    // it. That warning is expected there. Any other points at a problem in the unit.
    let version = systemd_version();
    let unexpected: Vec<&str> = stderr
        .lines()
        .filter(|line| {
            !(version < 253
                && line.ends_with("Failed to parse service type, ignoring: notify-reload"))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "systemd-analyze verify (systemd {version}) warned:\n{}",
        unexpected.join("\n")
    );
}

/// The major version of the installed systemd, from `systemd-analyze --version`.
fn systemd_version() -> u32 {
    let output = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|version| version.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the systemd version from {text:?}"))
}

/// The example environment file starts keygate unchanged, once the key
/// file and the listen addresses point at test values.
#[test]
fn env_file_example_starts() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/keygate.env");
    let text = std::fs::read_to_string(path).unwrap();
    let dir = TempDir::new("env-file");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);

    let mut command = Command::new(KEYGATE);
    command
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not NAME=VALUE: {line:?}"));
        names.push(name.to_string());
        command.env(name, value);
    }
    for name in ["KEYGATE_KEY_FILE", "KEYGATE_LISTEN", "KEYGATE_ADMIN_LISTEN"] {
        assert!(
            names.iter().any(|set| set == name),
            "keygate.env sets {name}"
        );
    }
    command
        .env("KEYGATE_KEY_FILE", &keys)
        .env("KEYGATE_LISTEN", "127.0.0.1:0")
        .env("KEYGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "debug");
    let keygate = Keygate::spawn(command);

    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);
    assert_eq!(status_with_key(keygate.auth, None), 401);
}
