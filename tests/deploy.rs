//! The Kubernetes manifests and the post-deploy check script.
//!
//! The manifests are checked with `kubernetes-validate --strict` (schema of
//! the Kubernetes API), `yamllint --strict`, and a few rules of their own.
//! The gateway's nginx configuration from the ConfigMap runs in a real nginx
//! in front of a real keygate. `deploy/check.sh` runs against a real keygate,
//! including a key rotation done the way the kubelet updates a Secret volume.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::tools::have_tool;
use common::*;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<PathBuf> {
    let dir = repository().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "expected manifests in {}", dir.display());
    files
}

fn describe(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn manifests_pass_kubernetes_validate() {
    if !have_tool(
        "kubernetes-validate",
        &["--version"],
        "install it with pip install kubernetes-validate",
    ) {
        return;
    }
    for manifest in manifests() {
        let output = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&manifest)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{} is not valid:\n{}",
            manifest.display(),
            describe(&output)
        );
    }

    // The validator must reject a misspelled field, or the loop above proves nothing.
    let dir = TempDir::new("invalid-manifest");
    let broken = dir.join("broken.yaml");
    let text = std::fs::read_to_string(&manifests()[0]).unwrap();
    std::fs::write(
        &broken,
        text.replacen("containerPort:", "containerPorts:", 1),
    )
    .unwrap();
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!output.status.success(), "a misspelled field passed");
}

#[test]
fn manifests_pass_yamllint() {
    if !have_tool(
        "yamllint",
        &["--version"],
        "install it with apt-get install yamllint",
    ) {
        return;
    }
    let output = Command::new("yamllint")
        .args(["--strict", "--format", "parsable"])
        .args(manifests())
        .output()
        .unwrap();
    assert!(output.status.success(), "yamllint:\n{}", describe(&output));
}

/// Counts the lines that contain `needle` outside comments.
fn count_lines(text: &str, needle: &str) -> usize {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter(|line| line.contains(needle))
        .count()
}

#[test]
fn manifests_harden_every_container() {
    for manifest in manifests() {
        let text = std::fs::read_to_string(&manifest).unwrap();
        let name = manifest.display();
        let containers = count_lines(&text, "image:");
        let pods = count_lines(&text, "kind: Deployment");
        assert!(containers > 0, "{name} has no containers");

        for setting in [
            "allowPrivilegeEscalation: false",
            "readOnlyRootFilesystem: true",
            r#"drop: ["ALL"]"#,
        ] {
            assert_eq!(
                count_lines(&text, setting),
                containers,
                "{name}: every container needs {setting}"
            );
        }
        for setting in [
            "runAsNonRoot: true",
            "type: RuntimeDefault",
            "automountServiceAccountToken: false",
        ] {
            assert_eq!(
                count_lines(&text, setting),
                pods,
                "{name}: every pod needs {setting}"
            );
        }
        assert_eq!(
            count_lines(&text, "subPath"),
            0,
            "{name}: subPath mounts never receive Secret updates"
        );
        assert!(
            count_lines(&text, "kind: NetworkPolicy") > 0,
            "{name} needs a NetworkPolicy"
        );
    }
}

/// Returns the value on the line after `- name: NAME`, as in a container's `env`.
fn env_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = text.lines();
    lines.find(|line| line.trim() == format!("- name: {name}"))?;
    lines.next()?.trim().strip_prefix("value: ")
}

#[test]
fn key_path_inside_secret_mount() {
    let mut checked = 0;
    for manifest in manifests() {
        let text = std::fs::read_to_string(&manifest).unwrap();
        let Some(key_path) = env_value(&text, "AUTH_SECRET_PATH") else {
            continue;
        };
        checked += 1;
        let mounted = text.lines().any(|line| {
            line.trim()
                .strip_prefix("mountPath: ")
                .is_some_and(|mount| Path::new(key_path).parent() == Some(Path::new(mount)))
        });
        assert!(
            mounted,
            "{}: AUTH_SECRET_PATH {key_path} must be a file directly inside a mounted Secret directory",
            manifest.display()
        );
        assert_eq!(key_path.rsplit('/').next(), Some("keys"));
    }
    assert_eq!(checked, 2, "both examples set AUTH_SECRET_PATH");
}

/// Returns the block scalar under `key: |`, with its indentation removed.
fn block_scalar(text: &str, key: &str) -> String {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut lines = text
        .lines()
        .skip_while(|line| line.trim() != format!("{key}: |"));
    let header = lines.next().expect("block scalar present");
    let body: Vec<&str> = lines
        .take_while(|line| line.trim().is_empty() || indent(line) > indent(header))
        .collect();
    let margin = body
        .iter()
        .map(|line| indent(line))
        .filter(|&n| n > 0)
        .min()
        .unwrap_or(0);
    let mut block = String::new();
    for line in body {
        block.push_str(line.get(margin..).unwrap_or(""));
        block.push('\n');
    }
    block
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx started in the foreground; stopped on drop.
struct Nginx(Child);

impl Drop for Nginx {
    /// Sends SIGTERM so that the master process stops its workers too. SIGKILL
    /// would leave the workers running, holding the test's output pipes open.
    fn drop(&mut self) {
        // SAFETY: kill(2) with a child's pid and a valid signal number.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let exited = wait_until(Duration::from_secs(5), || {
            self.0.try_wait().map_or(true, |status| status.is_some())
        });
        if !exited {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The gateway's nginx configuration, taken from the ConfigMap, in front of
/// a real keygate. The Service names are replaced with loopback addresses,
/// and a second server on loopback plays the app and echoes the key id.
#[test]
fn gateway_config_allows_and_denies() {
    if !have_tool(
        "nginx",
        &["-v"],
        "install it with apt-get install nginx-light",
    ) {
        return;
    }
    let dir = TempDir::new("gateway");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let keygate = Keygate::start(&keys, &[]);

    let manifest =
        std::fs::read_to_string(repository().join("deploy/kubernetes/forward-auth.yaml")).unwrap();
    let site = block_scalar(&manifest, "default.conf");
    let (gateway_port, app_port) = (free_port(), free_port());
    let site = site
        .replace("server keygate:8080;", &format!("server {};", keygate.auth))
        .replace("server echo:80;", &format!("server 127.0.0.1:{app_port};"))
        .replace("listen 8080;", &format!("listen 127.0.0.1:{gateway_port};"));
    assert!(
        site.contains(&keygate.auth.to_string()),
        "upstream keygate renamed?"
    );
    assert!(
        site.contains(&app_port.to_string()),
        "upstream echo renamed?"
    );

    let prefix = dir.path().display();
    let config = format!(
        "daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n\
         events {{}}\nhttp {{\n\
         access_log off;\n\
         client_body_temp_path {prefix}/body;\nproxy_temp_path {prefix}/proxy;\n\
         fastcgi_temp_path {prefix}/fastcgi;\nuwsgi_temp_path {prefix}/uwsgi;\nscgi_temp_path {prefix}/scgi;\n\
         server {{ listen 127.0.0.1:{app_port}; location / {{ return 200 \"key id $http_x_keygate_key_id\"; }} }}\n\
         {site}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start nginx");
    let _nginx = Nginx(child);
    let gateway = format!("http://127.0.0.1:{gateway_port}/some/path");
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", gateway_port)).is_ok()
    });
    if !up {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        panic!("nginx did not start:\n{log}");
    }

    let authorization = format!("Authorization: Bearer {KEY_A}");
    let (status, body) = curl(&["-H", &authorization, &gateway]);
    assert_eq!(status, 200, "allowed through the gateway");
    assert!(
        body.starts_with("key id sha256:"),
        "app got the key id: {body:?}"
    );

    let (status, _) = curl(&[&gateway]);
    assert_eq!(status, 401, "no key");
    let (status, _) = curl(&[
        "-H",
        "Authorization: Bearer test-key-unknown-0123456789",
        &gateway,
    ]);
    assert_eq!(status, 401, "unknown key");
    let (status, body) = curl(&[
        "-H",
        &authorization,
        "-H",
        "X-Keygate-Key-Id: forged",
        &gateway,
    ]);
    assert_eq!(status, 200);
    assert!(
        !body.contains("forged"),
        "a client's key id reached the app: {body:?}"
    );
    keygate.assert_no_key_in_logs();
}

#[test]
fn check_script_passes_shellcheck() {
    if !have_tool(
        "shellcheck",
        &["--version"],
        "install it with apt-get install shellcheck",
    ) {
        return;
    }
    let output = Command::new("shellcheck")
        .arg(repository().join("deploy/check.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "shellcheck:\n{}",
        describe(&output)
    );
}

fn check_script() -> Command {
    let mut command = Command::new("bash");
    command
        .arg(repository().join("deploy/check.sh"))
        .env_remove("KEYGATE_URL")
        .env_remove("KEYGATE_KEY")
        .env_remove("KEYGATE_ADMIN_URL")
        .env_remove("KEYGATE_NEW_KEY")
        .env_remove("KEYGATE_OLD_KEY")
        .stdin(Stdio::null());
    command
}

#[test]
fn check_script_passes_and_fails() {
    let dir = TempDir::new("check-script");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let keygate = Keygate::start(&keys, FAST_POLL);
    let url = format!("http://{}/", keygate.auth);

    let good = check_script()
        .arg(&url)
        .env("KEYGATE_KEY", KEY_A)
        .env("KEYGATE_ADMIN_URL", format!("http://{}", keygate.admin()))
        .output()
        .unwrap();
    let report = describe(&good);
    assert!(
        good.status.success(),
        "check.sh with a valid key:\n{report}"
    );
    assert!(
        report.contains("ok:   the given key allowed (200)"),
        "{report}"
    );
    assert!(report.contains("ok:   no key denied (401)"), "{report}");
    assert!(report.contains("ok:   /readyz (200)"), "{report}");

    let wrong = check_script().args([&url, KEY_B]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(1), "{}", describe(&wrong));
    assert!(describe(&wrong).contains("FAIL: the given key: expected allow, got 401"));

    let no_key = check_script().arg(&url).output().unwrap();
    assert_eq!(no_key.status.code(), Some(2), "{}", describe(&no_key));
}

/// Lays out `dir` as the kubelet lays out a Secret volume: the key file is a
/// symlink through `..data`, which points at a timestamped directory.
fn write_secret_volume(dir: &Path, version: &str, keys: &[&str]) {
    let data_dir = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data_dir).unwrap();
    write_keys(&data_dir.join("keys"), keys);
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(format!("..{version}"), &staged).unwrap();
    // rename(2) replaces ..data in one step, as the kubelet's atomic writer does.
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    if !dir.join("keys").is_symlink() {
        std::os::unix::fs::symlink("..data/keys", dir.join("keys")).unwrap();
    }
}

#[test]
fn check_script_sees_rotation() {
    let dir = TempDir::new("check-rotation");
    let volume = dir.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    write_secret_volume(&volume, "2026_01_01_00_00_00.1", &[KEY_A, KEY_B]);
    let keygate = Keygate::start(&volume.join("keys"), FAST_POLL);

    // The check starts first and waits, as after `kubectl apply` of a new Secret.
    let check = check_script()
        .arg(format!("http://{}/", keygate.auth))
        .env("KEYGATE_KEY", KEY_A)
        .env("KEYGATE_NEW_KEY", KEY_C)
        .env("KEYGATE_OLD_KEY", KEY_B)
        .env("KEYGATE_ROTATION_TIMEOUT", "20")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    write_secret_volume(&volume, "2026_01_01_00_01_00.2", &[KEY_A, KEY_C]);

    let output = check.wait_with_output().unwrap();
    let report = describe(&output);
    assert!(
        output.status.success(),
        "check.sh after rotation:\n{report}"
    );
    assert!(
        report.contains("ok:   the new key is allowed (200)"),
        "{report}"
    );
    assert!(
        report.contains("ok:   the old key is denied (401)"),
        "{report}"
    );
    keygate.assert_no_key_in_logs();
}
