//! Key-file reloading: each way a file can change, picked up on repeated
//! changes by the running binary.

mod common;

use std::fs::{self, File, FileTimes};
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use common::*;

/// Generous bound for a change to take effect with FAST_POLL on a busy machine.
const PICKUP: Duration = Duration::from_secs(5);

/// Asserts that `allowed` gets 200 and `denied` gets 401, waiting for a reload.
fn assert_switched(keygate: &Keygate, allowed: &str, denied: &str) {
    assert!(
        eventually_status(keygate.auth, Some(allowed), 200, PICKUP),
        "new key {allowed:.12}… not allowed in time"
    );
    assert!(
        eventually_status(keygate.auth, Some(denied), 401, PICKUP),
        "old key {denied:.12}… still allowed"
    );
    assert_eq!(status_with_key(keygate.auth, Some(allowed)), 200);
}

/// Kubernetes Secret volume as the kubelet's atomic writer lays it out:
/// `..TIMESTAMP/keys` contains the data, `..data` links to the current
/// timestamped directory, and `keys` links through `..data`.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn create(dir: &Path, keys: &[&str]) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        let data = volume.write_generation(keys);
        symlink(&data, dir.join("..data")).unwrap();
        symlink("..data/keys", dir.join("keys")).unwrap();
        volume
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// Writes a new timestamped directory and returns its name.
    fn write_generation(&mut self, keys: &[&str]) -> String {
        self.generation += 1;
        let name = format!(
            "..2026_12_04_10_00_{:02}.{}",
            self.generation,
            100 + self.generation
        );
        fs::create_dir(self.dir.join(&name)).unwrap();
        write_keys(&self.dir.join(&name).join("keys"), keys);
        name
    }

    /// Updates the volume the way the kubelet does: new directory, a
    /// temporary `..data_tmp` link renamed over `..data`, old directory removed.
    fn update(&mut self, keys: &[&str]) {
        let old = fs::read_link(self.dir.join("..data")).unwrap();
        let new = self.write_generation(keys);
        symlink(&new, self.dir.join("..data_tmp")).unwrap();
        fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        fs::remove_dir_all(self.dir.join(old)).unwrap();
    }
}

#[test]
fn kubelet_symlink_swap_repeated() {
    let dir = TempDir::new("kubelet");
    let mut volume = SecretVolume::create(dir.path(), &[KEY_A]);
    let keygate = Keygate::start(&volume.key_path(), FAST_POLL);
    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);

    volume.update(&[KEY_B]);
    assert_switched(&keygate, KEY_B, KEY_A);
    volume.update(&[KEY_C]);
    assert_switched(&keygate, KEY_C, KEY_B);
    volume.update(&[KEY_A]);
    assert_switched(&keygate, KEY_A, KEY_C);

    assert!(keygate.logs().contains("1 added, 1 removed"));
    keygate.assert_no_key_in_logs();
}

#[test]
fn mv_over_file_repeated() {
    let dir = TempDir::new("mv");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let keygate = Keygate::start(&keys, FAST_POLL);

    for (new, old) in [(KEY_B, KEY_A), (KEY_C, KEY_B), (KEY_A, KEY_C)] {
        let staged = dir.join("keys.new");
        write_keys(&staged, &[new]);
        fs::rename(&staged, &keys).unwrap();
        assert_switched(&keygate, new, old);
    }
    keygate.assert_no_key_in_logs();
}

#[test]
fn editor_save_repeated() {
    let dir = TempDir::new("editor");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let keygate = Keygate::start(&keys, FAST_POLL);

    for (new, old) in [(KEY_B, KEY_A), (KEY_C, KEY_B)] {
        // What vim does with `backupcopy=no`: rename away, write anew, delete the backup.
        let backup = dir.join("keys~");
        fs::rename(&keys, &backup).unwrap();
        write_keys(&keys, &[new]);
        fs::remove_file(&backup).unwrap();
        assert_switched(&keygate, new, old);
    }
    keygate.assert_no_key_in_logs();
}

#[test]
fn missing_file_keeps_keys_then_recreated() {
    let dir = TempDir::new("recreate");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let keygate = Keygate::start(&keys, FAST_POLL);

    for (new, old) in [(KEY_B, KEY_A), (KEY_C, KEY_B)] {
        fs::remove_file(&keys).unwrap();
        assert!(
            keygate.wait_for_log("cannot read key file", PICKUP),
            "missing file not reported"
        );
        // Several polls pass while the file is missing; the last good set stays.
        thread::sleep(Duration::from_millis(600));
        assert_eq!(
            status_with_key(keygate.auth, Some(old)),
            200,
            "last good set lost"
        );

        write_keys(&keys, &[new]);
        assert_switched(&keygate, new, old);
        assert!(keygate.wait_for_log("is readable again", PICKUP));
    }

    // The failure is logged when it starts, not on every poll.
    let failures = keygate.logs().matches("cannot read key file").count();
    assert_eq!(failures, 2, "{}", keygate.logs());
    keygate.assert_no_key_in_logs();
}

#[test]
fn in_place_rewrite_same_size_and_mtime() {
    let dir = TempDir::new("inplace");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let original = fs::metadata(&keys).unwrap().modified().unwrap();
    let keygate = Keygate::start(&keys, FAST_POLL);

    for (new, old) in [(KEY_B, KEY_A), (KEY_C, KEY_B)] {
        let mut file = File::options().write(true).open(&keys).unwrap();
        file.write_all(format!("{new}\n").as_bytes()).unwrap();
        // Same length, and the modification time goes back to the original.
        file.set_times(FileTimes::new().set_modified(original))
            .unwrap();
        drop(file);
        assert_eq!(fs::metadata(&keys).unwrap().modified().unwrap(), original);
        assert_switched(&keygate, new, old);
    }
}

#[test]
fn truncate_then_write_never_admits_prefix() {
    let dir = TempDir::new("truncate");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    // The settle delay is much longer than the pause inside each write below.
    let keygate = Keygate::start(
        &keys,
        &["--poll-interval", "100ms", "--settle-delay", "150ms"],
    );

    let full_key = "rotated-key-0123456789-0123456789-abcdef";
    let prefix = &full_key[..24];
    let stop = Arc::new(AtomicBool::new(false));
    let prefix_allowed = Arc::new(AtomicU64::new(0));

    let prober = {
        let stop = Arc::clone(&stop);
        let prefix_allowed = Arc::clone(&prefix_allowed);
        let address = keygate.auth;
        let prefix = prefix.to_string();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if status_with_key(address, Some(&prefix)) == 200 {
                    prefix_allowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    for round in 0..20 {
        let content = if round % 2 == 0 {
            full_key.to_string()
        } else {
            KEY_A.to_string()
        };
        // Like a shell's `>`: truncate, write part, pause, write the rest.
        let mut file = File::create(&keys).unwrap();
        let (head, tail) = content.split_at(24);
        file.write_all(head.as_bytes()).unwrap();
        file.flush().unwrap();
        thread::sleep(Duration::from_millis(40));
        file.write_all(format!("{tail}\n").as_bytes()).unwrap();
        drop(file);
        thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    prober.join().unwrap();

    assert_eq!(
        prefix_allowed.load(Ordering::Relaxed),
        0,
        "a prefix of a key was accepted"
    );
    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);
}

#[test]
fn empty_file_denies_all_and_unready() {
    let dir = TempDir::new("empty");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let keygate = Keygate::start(&keys, FAST_POLL);
    let readyz = "GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(
        exchange(keygate.admin(), readyz.as_bytes()).unwrap().status,
        200
    );

    fs::write(&keys, "# all keys removed\n").unwrap();
    assert!(
        eventually_status(keygate.auth, Some(KEY_A), 401, PICKUP),
        "removed key still allowed"
    );
    let response = exchange(keygate.admin(), readyz.as_bytes()).unwrap();
    assert_eq!(response.status, 503);
    assert!(
        response.body_text().contains("no valid keys"),
        "{}",
        response.body_text()
    );
    assert!(keygate.logs().contains("contains no valid keys"));
    // Liveness stays fine: restarting would not help.
    let healthz = exchange(
        keygate.admin(),
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(healthz.status, 200);

    write_keys(&keys, &[KEY_B]);
    assert!(eventually_status(keygate.auth, Some(KEY_B), 200, PICKUP));
    assert_eq!(
        exchange(keygate.admin(), readyz.as_bytes()).unwrap().status,
        200
    );
}

#[test]
fn sighup_reloads_at_once() {
    let dir = TempDir::new("sighup");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    // Polling alone would take a minute.
    let keygate = Keygate::start(&keys, &["--poll-interval", "60s"]);

    write_keys(&keys, &[KEY_B]);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status_with_key(keygate.auth, Some(KEY_A)),
        200,
        "changed before any poll or signal"
    );

    keygate.signal("HUP");
    assert!(eventually_status(
        keygate.auth,
        Some(KEY_B),
        200,
        Duration::from_secs(2)
    ));
    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 401);
    assert!(keygate.logs().contains("received SIGHUP"));
}

#[test]
fn unreadable_paths_keep_last_good_set() {
    let dir = TempDir::new("unreadable");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let keygate = Keygate::start(&keys, FAST_POLL);

    // A dangling symlink, then a directory, at the key path.
    fs::remove_file(&keys).unwrap();
    symlink(dir.join("nowhere"), &keys).unwrap();
    assert!(keygate.wait_for_log("cannot read key file", PICKUP));
    fs::remove_file(&keys).unwrap();
    fs::create_dir(&keys).unwrap();
    assert!(keygate.wait_for_log("is a directory", PICKUP));
    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);

    let metrics = exchange(
        keygate.admin(),
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(
        metrics.body_text().contains("keygate_key_file_failing 1"),
        "{}",
        metrics.body_text()
    );
    let readyz = exchange(
        keygate.admin(),
        b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert!(
        readyz.body_text().contains("is a directory"),
        "{}",
        readyz.body_text()
    );

    fs::remove_dir(&keys).unwrap();
    write_keys(&keys, &[KEY_B]);
    assert_switched(&keygate, KEY_B, KEY_A);
}
