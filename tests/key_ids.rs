//! Key ids and rotation visibility: `keys check`, `keys id`, the key-id
//! header, per-key metrics, reload logs and key-file warnings.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn key_id(key: &str) -> String {
    let mut child = Command::new(KEYGATE)
        .args(["keys", "id"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn keys_id_matches_header_and_metrics() {
    let dir = TempDir::new("ids");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A, KEY_B]);
    let keygate = Keygate::start(&keys, FAST_POLL);

    let id_a = key_id(KEY_A);
    assert!(id_a.starts_with("sha256:"), "{id_a}");
    assert_eq!(id_a.len(), 23, "{id_a}");
    assert!(!id_a.contains(KEY_A));

    let raw =
        format!("GET / HTTP/1.1\r\nAuthorization: Bearer {KEY_A}\r\nConnection: close\r\n\r\n");
    for _ in 0..3 {
        let response = exchange(keygate.auth, raw.as_bytes()).unwrap();
        assert_eq!(response.header("X-Keygate-Key-Id"), Some(id_a.as_str()));
    }

    let metrics = exchange(
        keygate.admin(),
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap()
    .body_text();
    assert!(
        metrics.contains(&format!(
            "keygate_key_requests_allowed_total{{key_id=\"{id_a}\"}} 3"
        )),
        "{metrics}"
    );
    let id_b = key_id(KEY_B);
    assert!(
        metrics.contains(&format!(
            "keygate_key_requests_allowed_total{{key_id=\"{id_b}\"}} 0"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "keygate_key_last_used_timestamp_seconds{{key_id=\"{id_b}\"}} 0"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("keygate_keys 2"), "{metrics}");
    assert!(!metrics.contains(KEY_A));
    assert!(!metrics.contains(KEY_B));

    let readyz = exchange(
        keygate.admin(),
        b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap()
    .body_text();
    assert!(
        readyz.contains("\"keys\":2") && readyz.contains("\"reload_error\":null"),
        "{readyz}"
    );
}

#[test]
fn reload_logs_ids_added_and_removed() {
    let dir = TempDir::new("idlog");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A, KEY_B]);
    let keygate = Keygate::start(&keys, FAST_POLL);

    write_keys(&keys, &[KEY_B, KEY_C]);
    assert!(keygate.wait_for_log("key ids removed", Duration::from_secs(5)));
    let logs = keygate.logs();
    assert!(
        logs.contains(&format!("key ids added: {}", key_id(KEY_C))),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("key ids removed: {}", key_id(KEY_A))),
        "{logs}"
    );
    assert!(logs.contains(": 2 keys, 1 added, 1 removed"), "{logs}");
    keygate.assert_no_key_in_logs();
}

#[test]
fn keys_check_reports_each_line() {
    let dir = TempDir::new("check");
    let keys = dir.join("keys");
    std::fs::write(
        &keys,
        format!("# team a\n{KEY_A}\nshort\n{KEY_A}\nbad key with spaces\n{KEY_B}"),
    )
    .unwrap();

    let output = Command::new(KEYGATE)
        .args(["keys", "check", keys.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(&format!("line 2: {}", key_id(KEY_A))),
        "{text}"
    );
    assert!(text.contains("line 3: skipped: key too short"), "{text}");
    assert!(
        text.contains("line 4:") && text.contains("duplicate"),
        "{text}"
    );
    assert!(
        text.contains("line 5: skipped: invalid character at column 4"),
        "{text}"
    );
    assert!(
        text.contains(&format!("line 6: {}", key_id(KEY_B))),
        "{text}"
    );
    assert!(
        !text.contains(KEY_A) && !text.contains("short\n"),
        "key material in output: {text}"
    );

    // The configured key file is the default, and a file the daemon would refuse fails.
    std::fs::write(&keys, "short\n").unwrap();
    let output = Command::new(KEYGATE)
        .args(["keys", "check"])
        .env("AUTH_SECRET_PATH", &keys)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("no valid keys"));

    let missing = Command::new(KEYGATE)
        .args(["keys", "check", "/nonexistent/keys"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/keys"));
}

#[test]
fn world_readable_file_warns_outside_kubernetes() {
    let dir = TempDir::new("perm");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let keygate = Keygate::start(&keys, &[]);
    assert!(
        keygate.logs().contains("readable by every user"),
        "{}",
        keygate.logs()
    );
    drop(keygate);

    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let keygate = Keygate::start(&keys, &[]);
    assert!(
        !keygate.logs().contains("readable by every user"),
        "{}",
        keygate.logs()
    );
}

#[test]
fn short_key_warns() {
    let dir = TempDir::new("shortkey");
    let keys = dir.join("keys");
    write_keys(&keys, &["sixteen-byte-key"]);
    let keygate = Keygate::start(&keys, &[]);
    assert!(
        keygate.logs().contains("shorter than 32 bytes"),
        "{}",
        keygate.logs()
    );
    assert!(!keygate.logs().contains("sixteen-byte-key"));
}

/// A Secret mounted with `subPath` is a bind mount of one file. When the
/// kubelet updates the Secret, the old file is unlinked but stays mounted.
#[test]
fn bind_mounted_file_warns_mount_and_unlink() {
    let probe = Command::new("unshare").args(["--mount", "true"]).status();
    if !probe.is_ok_and(|status| status.success()) {
        eprintln!("SKIPPED: unshare --mount is not permitted here");
        assert!(
            std::env::var("CI").is_err(),
            "unshare --mount must work in CI"
        );
        return;
    }
    let dir = TempDir::new("subpath");
    let source = dir.join("secret-data");
    let target = dir.join("mounted-keys");
    write_keys(&source, &[KEY_A]);
    write_keys(&target, &[]);

    let script = format!(
        "mount --bind {source} {target} && exec {KEYGATE} --key-file {target} --listen 127.0.0.1:0 --admin-listen off --poll-interval 200ms",
        source = source.display(),
        target = target.display()
    );
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let keygate = Keygate::spawn(command);
    assert!(
        keygate.logs().contains("is itself a mount point"),
        "{}",
        keygate.logs()
    );

    std::fs::remove_file(&source).unwrap();
    assert!(
        keygate.wait_for_log("was deleted but is still reachable", Duration::from_secs(5)),
        "{}",
        keygate.logs()
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        keygate
            .logs()
            .matches("was deleted but is still reachable")
            .count(),
        1,
        "warned more than once"
    );
    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);
}
