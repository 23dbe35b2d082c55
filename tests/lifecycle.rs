//! Start-up failures, command-line errors, signals and graceful shutdown.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs keygate to completion with `args` and `env`, returning (exit code, stderr, elapsed).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (i32, String, Duration) {
    let started = Instant::now();
    let mut command = Command::new(KEYGATE);
    command
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args);
    command
        .env_remove("AUTH_SECRET_PATH")
        .env_remove("KEYGATE_KEY_FILE")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run keygate");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (
        output.status.code().unwrap_or(-1),
        stderr,
        started.elapsed(),
    )
}

fn uid() -> String {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn missing_key_file_config_exits_2() {
    let (code, stderr, _) = run_to_exit(&[], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--key-file") && stderr.contains("AUTH_SECRET_PATH"),
        "{stderr}"
    );
}

#[test]
fn missing_key_file_exits_1_fast() {
    let dir = TempDir::new("missing");
    let path = dir.join("absent-keys");
    let (code, stderr, elapsed) = run_to_exit(&["--key-file", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("ERROR"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(path.to_str().unwrap()),
        "path missing: {stderr}"
    );
    assert!(
        lines[0].contains("No such file"),
        "reason missing: {stderr}"
    );
    assert!(
        lines[0].contains(&format!("uid {}", uid())),
        "uid missing: {stderr}"
    );
}

#[test]
fn key_file_from_auth_secret_path() {
    let dir = TempDir::new("envpath");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let keygate = Keygate::start_with(&[], &[("AUTH_SECRET_PATH", keys.to_str().unwrap())]);
    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);
}

#[test]
fn file_without_valid_keys_exits_1() {
    let dir = TempDir::new("novalid");
    let keys = dir.join("keys");
    std::fs::write(&keys, "# comment\nshort\n\n").unwrap();
    let (code, stderr, _) = run_to_exit(&["--key-file", keys.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no valid keys"), "{stderr}");
    assert!(stderr.contains("line 2 skipped: key too short"), "{stderr}");
    assert!(!stderr.contains("short\n"), "line content leaked: {stderr}");
}

#[test]
fn invalid_values_exit_2_naming_them() {
    let dir = TempDir::new("badflag");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let path = keys.to_str().unwrap();

    /// Extra arguments, extra environment, and the text the error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--poll-interval", "soon"], &[], "--poll-interval"),
        (&["--max-connections", "0"], &[], "--max-connections"),
        (&["--upstream", "https://x:1"], &[], "https"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (
            &[],
            &[("KEYGATE_IDLE_TIMEOUT", "1 day")],
            "KEYGATE_IDLE_TIMEOUT",
        ),
        (
            &[],
            &[("KEYGATE_KEY_ID_HEADER", "Bad Header")],
            "KEYGATE_KEY_ID_HEADER",
        ),
    ];
    for (args, env, needle) in cases {
        let mut all = vec!["--key-file", path];
        all.extend_from_slice(args);
        let (code, stderr, _) = run_to_exit(&all, env);
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(needle), "{needle} not named: {stderr}");
    }
}

#[test]
fn busy_port_exits_1_naming_it() {
    let dir = TempDir::new("busy");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = occupied.local_addr().unwrap().to_string();
    let (code, stderr, _) = run_to_exit(
        &["--key-file", keys.to_str().unwrap(), "--listen", &address],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&address) && stderr.contains("--listen"),
        "{stderr}"
    );
}

#[test]
fn help_and_version() {
    let help = Command::new(KEYGATE).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--key-file",
        "AUTH_SECRET_PATH",
        "KEYGATE_POLL_INTERVAL",
        "default 2s",
        "--shutdown-timeout",
    ] {
        assert!(text.contains(needle), "{needle} missing from --help");
    }
    let version = Command::new(KEYGATE).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("keygate 0."));
}

#[test]
fn sigterm_exits_0_promptly() {
    let dir = TempDir::new("sigterm");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    for signal in ["TERM", "INT"] {
        let mut keygate = Keygate::start(&keys, &[]);
        // An idle keep-alive connection must not hold up the exit.
        let idle = connect(keygate.auth);
        assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);
        let started = Instant::now();
        keygate.signal(signal);
        let status = keygate.wait_exit(Duration::from_secs(5)).expect("exited");
        assert_eq!(status.code(), Some(0), "{signal}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{signal} took {:?}",
            started.elapsed()
        );
        assert!(keygate.logs().contains("keygate stopped"));
        drop(idle);
    }
}

#[test]
fn shutdown_delay_turns_readiness_first() {
    let dir = TempDir::new("drain");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let mut keygate = Keygate::start(&keys, &["--shutdown-delay", "2s"]);
    let readyz = b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(exchange(keygate.admin(), readyz).unwrap().status, 200);

    keygate.signal("TERM");
    assert!(
        wait_until(Duration::from_secs(1), || exchange(keygate.admin(), readyz)
            .is_some_and(|r| r.status == 503)),
        "readiness did not turn 503"
    );
    // During the delay, requests are still decided.
    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);
    let status = keygate
        .wait_exit(Duration::from_secs(6))
        .expect("exited after the delay");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_as_pid_1_in_pid_namespace() {
    if Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("SKIPPED: unshare --pid is not permitted here");
        assert!(
            std::env::var("CI").is_err(),
            "unshare --pid must work in CI"
        );
        return;
    }
    let dir = TempDir::new("pid1");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);

    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--kill-child", KEYGATE])
        .args([
            "--key-file",
            keys.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut keygate = Keygate::spawn(command);
    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);

    // keygate is unshare's only child, and PID 1 inside the new namespace.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", keygate.pid())).unwrap();
    let pid: u32 = children
        .split_whitespace()
        .next()
        .expect("keygate child")
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let namespace_pid = status
        .lines()
        .find(|line| line.starts_with("NSpid:"))
        .unwrap();
    assert!(
        namespace_pid.trim_end().ends_with("\t1"),
        "not PID 1: {namespace_pid}"
    );

    let started = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let exit = keygate
        .wait_exit(Duration::from_secs(5))
        .expect("PID 1 keygate exited on SIGTERM");
    assert_eq!(exit.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn max_key_file_bytes_flag_applied() {
    let dir = TempDir::new("filesize");
    let keys = dir.join("keys");
    let many: Vec<String> = (0..100)
        .map(|index| format!("size-test-key-{index:04}-0123456789"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    write_keys(&keys, &many);
    let path = keys.to_str().unwrap();

    let (code, stderr, _) = run_to_exit(&["--key-file", path, "--max-key-file-bytes", "1024"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("1024-byte limit"), "{stderr}");
    assert!(stderr.contains("--max-key-file-bytes"), "{stderr}");

    let keygate = Keygate::start(&keys, &["--max-key-file-bytes", "8192"]);
    assert_eq!(status_with_key(keygate.auth, Some(many[99])), 200);
}
