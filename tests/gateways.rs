//! forward-auth behind gateways. Real nginx and Caddy from Debian's packages
//! run the configs in examples/gateways in front of keygate and a recording
//! upstream. Envoy and Traefik cannot be installed here, so the check
//! requests they send are replayed to keygate over a socket.
//!
//! Without nginx or Caddy the tests for it print a skip message and pass,
//! unless `KEYGATE_REQUIRE_GATEWAYS=1` is set, as `.ci/run` does.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const KEY_ID_HEADER: &str = "X-Keygate-Key-Id";

/// Addresses written in the example configs, replaced when a test renders one.
const EXAMPLE_KEYGATE: &str = "127.0.0.1:8080";
const EXAMPLE_UPSTREAM: &str = "127.0.0.1:9000";
const EXAMPLE_NGINX_LISTEN: &str = "listen 127.0.0.1:8000;";
const EXAMPLE_CADDY_SITE: &str = "http://:8000 {";

/// Body the recording upstream sends with every `200`.
const UPSTREAM_BODY: &str = "upstream";

/// Maximum time a gateway may take to deny a request whose declared body
/// never arrives. A gateway or keygate that waited for the body would take its
/// whole read timeout instead (60 s for nginx).
const DECISION_LIMIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Recording upstream

/// Request head and body size that the upstream received.
#[derive(Clone, Debug)]
struct Received {
    head: String,
    body_length: usize,
}

impl Received {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// Values of every header field called `name`, ignoring case.
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(field, _)| field.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim())
            .collect()
    }
}

/// Upstream service that records each request and responds `200 upstream`.
struct Upstream {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        // The accept thread ends with the test process.
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = Arc::clone(&sink);
                thread::spawn(move || serve_upstream(stream, &sink));
            }
        });
        Upstream { address, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Serves one request: reads its head and body, records them, responds and
/// closes. The record is stored before the response is sent, so a client
/// that has the response also finds the record.
fn serve_upstream(stream: TcpStream, sink: &Mutex<Vec<Received>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let Some(head) = read_head(&mut reader) else {
        return;
    };
    let record = Received {
        body_length: 0,
        head,
    };
    let Some(body_length) = read_body(&mut reader, &record) else {
        return;
    };
    sink.lock().unwrap().push(Received {
        body_length,
        ..record
    });
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{UPSTREAM_BODY}",
        UPSTREAM_BODY.len()
    );
    let _ = reader.get_mut().write_all(response.as_bytes());
}

fn read_head(reader: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        head.push_str(&line);
    }
}

/// Reads a `Content-Length` or chunked body and returns its length in bytes.
fn read_body(reader: &mut impl BufRead, request: &Received) -> Option<usize> {
    let chunked = request
        .header_values("Transfer-Encoding")
        .iter()
        .any(|value| value.eq_ignore_ascii_case("chunked"));
    if chunked {
        return read_chunked(reader);
    }
    let length: usize = request
        .header_values("Content-Length")
        .first()
        .map_or(Some(0), |value| value.parse().ok())?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(length)
}

fn read_chunked(reader: &mut impl BufRead) -> Option<usize> {
    let mut total = 0;
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line).ok()?;
        let size_text = size_line.trim().split(';').next()?;
        let size = usize::from_str_radix(size_text, 16).ok()?;
        if size == 0 {
            // Trailer fields, if any, end with an empty line.
            while read_head(reader).is_some_and(|trailer| !trailer.is_empty()) {}
            return Some(total);
        }
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        total += size;
    }
}

// ---------------------------------------------------------------------------
// Gateways

#[derive(Clone, Copy, Debug)]
enum GatewayKind {
    Nginx,
    Caddy,
}

impl GatewayKind {
    fn name(self) -> &'static str {
        match self {
            GatewayKind::Nginx => "nginx",
            GatewayKind::Caddy => "caddy",
        }
    }

    /// Candidate paths of the program. Debian installs nginx in /usr/sbin,
    /// which is not on every user's PATH.
    fn programs(self) -> &'static [&'static str] {
        match self {
            GatewayKind::Nginx => &["nginx", "/usr/sbin/nginx"],
            GatewayKind::Caddy => &["caddy", "/usr/bin/caddy"],
        }
    }

    fn version_argument(self) -> &'static str {
        match self {
            GatewayKind::Nginx => "-v",
            GatewayKind::Caddy => "version",
        }
    }

    /// Finds the program, or prints a skip message and returns `None`.
    /// Panics instead when `KEYGATE_REQUIRE_GATEWAYS=1`.
    fn find_program(self) -> Option<&'static str> {
        let found = self.programs().iter().copied().find(|program| {
            Command::new(program)
                .arg(self.version_argument())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        });
        if found.is_none() {
            let name = self.name();
            if std::env::var("KEYGATE_REQUIRE_GATEWAYS").as_deref() == Ok("1") {
                panic!(
                    "{name} is not installed but KEYGATE_REQUIRE_GATEWAYS=1 requires it; install it with apt-get install {name}"
                );
            }
            eprintln!(
                "SKIPPED: {name} is not installed; install it to run the {name} gateway tests"
            );
        }
        found
    }
}

/// Gateway process, killed on drop.
struct Gateway {
    kind: GatewayKind,
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

impl Gateway {
    /// Everything the gateway has written to its log file, for failure messages.
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(mut self) -> Gateway {
        let ready = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(self.address).is_ok()
                || self.child.try_wait().ok().flatten().is_some()
        });
        let exited = self.child.try_wait().ok().flatten();
        assert!(
            ready && exited.is_none(),
            "{} did not start (exit status {exited:?}); log:\n{}",
            self.kind.name(),
            self.log_text()
        );
        self
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a loopback address with a port that was free a moment ago.
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
}

/// Reads `examples/gateways/<file>` and replaces its example addresses.
/// Each example address must occur, so the examples cannot drift from what
/// the tests run.
fn render_example(file: &str, replacements: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/gateways")
        .join(file);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "{} no longer contains {from}",
            path.display()
        );
        text = text.replace(from, to);
    }
    text
}

/// Starts nginx in the foreground, as one process, with every path in `dir`.
fn start_nginx(program: &str, dir: &TempDir, keygate: SocketAddr, upstream: SocketAddr) -> Gateway {
    let listen = free_address();
    let site = render_example(
        "nginx.conf",
        &[
            (EXAMPLE_KEYGATE, keygate.to_string()),
            (EXAMPLE_UPSTREAM, upstream.to_string()),
            (EXAMPLE_NGINX_LISTEN, format!("listen {listen};")),
        ],
    );
    let root = dir.path().display();
    std::fs::write(dir.join("keygate.conf"), site).unwrap();
    let main = format!(
        "daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 64;
}}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/keygate.conf;
}}
"
    );
    let config = dir.join("nginx.conf");
    std::fs::write(&config, main).unwrap();

    let log = dir.join("error.log");
    let child = Command::new(program)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&config)
        // Start-up errors go here too, instead of the packaged log path.
        .arg("-e")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    Gateway {
        kind: GatewayKind::Nginx,
        child,
        address: listen,
        log,
    }
    .wait_ready()
}

/// Starts Caddy with the admin endpoint off and its state in `dir`.
fn start_caddy(program: &str, dir: &TempDir, keygate: SocketAddr, upstream: SocketAddr) -> Gateway {
    let listen = free_address();
    let site = render_example(
        "Caddyfile",
        &[
            (EXAMPLE_KEYGATE, keygate.to_string()),
            (EXAMPLE_UPSTREAM, upstream.to_string()),
            (EXAMPLE_CADDY_SITE, format!("http://:{} {{", listen.port())),
        ],
    );
    let root = dir.path().display();
    let global = format!(
        "{{\n\tadmin off\n\tauto_https off\n\tstorage file_system {{\n\t\troot {root}/storage\n\t}}\n}}\n\n"
    );
    let config = dir.join("Caddyfile");
    std::fs::write(&config, global + &site).unwrap();

    let log = dir.join("caddy.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let child = Command::new(program)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--adapter", "caddyfile"])
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn caddy");
    Gateway {
        kind: GatewayKind::Caddy,
        child,
        address: listen,
        log,
    }
    .wait_ready()
}

/// keygate, the upstream and a gateway in front of both.
struct Stack {
    // Field order is drop order: the gateway stops before the directory goes.
    gateway: Gateway,
    keygate: Option<Keygate>,
    upstream: Upstream,
    _dir: TempDir,
}

impl Stack {
    /// Starts the stack, or returns `None` when the gateway is not installed.
    fn start(kind: GatewayKind, name: &str) -> Option<Stack> {
        let program = kind.find_program()?;
        let dir = TempDir::new(&format!("{}-{name}", kind.name()));
        let keys = dir.join("keys");
        write_keys(&keys, &[KEY_A, KEY_B]);
        let keygate = Keygate::start(&keys, FAST_POLL);
        let upstream = Upstream::start();
        let gateway = match kind {
            GatewayKind::Nginx => start_nginx(program, &dir, keygate.auth, upstream.address),
            GatewayKind::Caddy => start_caddy(program, &dir, keygate.auth, upstream.address),
        };
        Some(Stack {
            gateway,
            keygate: Some(keygate),
            upstream,
            _dir: dir,
        })
    }

    fn keygate(&self) -> &Keygate {
        self.keygate.as_ref().expect("keygate running")
    }

    /// Sends raw bytes to the gateway and reads one response.
    fn send(&self, raw: &str) -> Response {
        exchange(self.gateway.address, raw.as_bytes()).unwrap_or_else(|| {
            panic!(
                "no response from {}; its log:\n{}",
                self.gateway.kind.name(),
                self.gateway.log_text()
            )
        })
    }

    /// Context for assertion messages.
    fn describe(&self, response: &Response) -> String {
        format!(
            "{}: status {}, headers {:?}, body {:?}; gateway log:\n{}",
            self.gateway.kind.name(),
            response.status,
            response.headers,
            response.body_text(),
            self.gateway.log_text()
        )
    }
}

/// Asks keygate directly for the id of `key`.
fn key_id_of(keygate: &Keygate, key: &str) -> String {
    let raw = format!("GET / HTTP/1.1\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n");
    let response = exchange(keygate.auth, raw.as_bytes()).expect("keygate response");
    assert_eq!(response.status, 200);
    response
        .header(KEY_ID_HEADER)
        .expect("key id header")
        .to_string()
}

// ---------------------------------------------------------------------------
// Cases run against each real gateway

fn check_valid_key_reaches_upstream(stack: &Stack) {
    let expected_id = key_id_of(stack.keygate(), KEY_A);
    let response = stack.send(&format!(
        "GET /api/v1/items?x=1 HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {KEY_A}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(response.status, 200, "{}", stack.describe(&response));
    assert_eq!(response.body_text(), UPSTREAM_BODY);

    let received = stack.upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let request = &received[0];
    assert!(
        request.request_line().starts_with("GET /api/v1/items?x=1 "),
        "{request:?}"
    );
    assert_eq!(request.header_values(KEY_ID_HEADER), [expected_id.as_str()]);
    assert!(
        request.header_values("Authorization").is_empty(),
        "the example configs keep the key from the upstream: {request:?}"
    );
    assert!(!request.head.contains(KEY_A), "{request:?}");
    stack.keygate().assert_no_key_in_logs();
}

fn check_wrong_or_missing_key_denied(stack: &Stack) {
    let cases = [
        ("missing key", String::new(), false),
        (
            "wrong key",
            "Authorization: Bearer test-key-wrong-wrong-wrong-wrong-wrong\r\n".to_string(),
            true,
        ),
        (
            "other scheme",
            "Authorization: Basic dXNlcjpwYXNz\r\n".to_string(),
            false,
        ),
    ];
    for (name, authorization, token_presented) in cases {
        let response = stack.send(&format!(
            "GET /api/v1/items HTTP/1.1\r\nHost: api.test\r\n{authorization}Connection: close\r\n\r\n"
        ));
        let context = format!("{name}: {}", stack.describe(&response));
        assert_eq!(response.status, 401, "{context}");
        let challenge = response.header("WWW-Authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"keygate\""),
            "{context}"
        );
        assert_eq!(
            challenge.contains("error=\"invalid_token\""),
            token_presented,
            "{context}"
        );
    }
    let received = stack.upstream.received();
    assert!(
        received.is_empty(),
        "a denied request reached the upstream: {received:?}"
    );
}

fn check_post_body_decided_without_waiting(stack: &Stack) {
    // Declared but never sent. 1,000,000 bytes stays under nginx's default
    // client_max_body_size of 1 MiB, which nginx checks before auth_request.
    let started = Instant::now();
    let response = stack.send(
        "POST /upload HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer test-key-wrong-wrong-wrong-wrong-wrong\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n",
    );
    let elapsed = started.elapsed();
    eprintln!(
        "{}: denied a POST with an unsent 1 MB body in {elapsed:?}",
        stack.gateway.kind.name()
    );
    assert_eq!(response.status, 401, "{}", stack.describe(&response));
    assert!(elapsed < DECISION_LIMIT, "denial took {elapsed:?}");

    // An allowed POST reaches the upstream with its whole body.
    let body = vec![b'x'; 256 * 1024];
    let started = Instant::now();
    let mut stream = connect(stack.gateway.address);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {KEY_B}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let response = read_response(&mut stream, false).expect("response to the allowed POST");
    let elapsed = started.elapsed();
    eprintln!(
        "{}: passed a POST with a 256 KiB body in {elapsed:?}",
        stack.gateway.kind.name()
    );
    assert_eq!(response.status, 200, "{}", stack.describe(&response));
    assert!(elapsed < DECISION_LIMIT, "allowed POST took {elapsed:?}");

    // A chunked body, whose length is not declared in advance, passes too.
    let response = stack.send(&format!(
        "POST /upload HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {KEY_B}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    ));
    assert_eq!(response.status, 200, "{}", stack.describe(&response));

    let received = stack.upstream.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received[0].request_line().starts_with("POST /upload "));
    assert_eq!(received[0].body_length, body.len());
    assert_eq!(received[1].body_length, "hello world".len());
    let expected_id = key_id_of(stack.keygate(), KEY_B);
    for request in &received {
        assert_eq!(request.header_values(KEY_ID_HEADER), [expected_id.as_str()]);
    }
}

fn check_forged_key_id_stripped(stack: &Stack) {
    let expected_id = key_id_of(stack.keygate(), KEY_A);
    let forged = "X-Keygate-Key-Id: sha256:0000000000000000\r\nx-keygate-key-id: forged\r\n";

    let response = stack.send(&format!(
        "GET /api HTTP/1.1\r\nHost: api.test\r\n{forged}Authorization: Bearer {KEY_A}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(response.status, 200, "{}", stack.describe(&response));
    let received = stack.upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].header_values(KEY_ID_HEADER),
        [expected_id.as_str()],
        "the upstream must see keygate's key id only"
    );

    let response = stack.send(&format!(
        "GET /api HTTP/1.1\r\nHost: api.test\r\n{forged}Connection: close\r\n\r\n"
    ));
    assert_eq!(response.status, 401, "{}", stack.describe(&response));
    assert_eq!(
        stack.upstream.received().len(),
        1,
        "a forged id without a key reached the upstream"
    );
}

fn check_keygate_stopped_fails_closed(mut stack: Stack) {
    let request = format!(
        "GET /api HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {KEY_A}\r\nConnection: close\r\n\r\n"
    );
    // The first request lets the gateway keep a connection to keygate open,
    // so the next one also covers a pooled connection that dies.
    let response = stack.send(&request);
    assert_eq!(response.status, 200, "{}", stack.describe(&response));

    drop(stack.keygate.take());
    let response = stack.send(&request);
    eprintln!(
        "{}: responded {} while keygate was down",
        stack.gateway.kind.name(),
        response.status
    );
    assert!(
        [401, 500, 502, 503].contains(&response.status),
        "{}",
        stack.describe(&response)
    );
    assert_ne!(response.body_text(), UPSTREAM_BODY);
    assert_eq!(
        stack.upstream.received().len(),
        1,
        "a request reached the upstream while keygate was down"
    );
}

/// Defines one test module per gateway, with one test per case.
macro_rules! gateway_tests {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn valid_key_reaches_upstream() {
                if let Some(stack) = Stack::start($kind, "allow") {
                    check_valid_key_reaches_upstream(&stack);
                }
            }

            #[test]
            fn wrong_or_missing_key_denied() {
                if let Some(stack) = Stack::start($kind, "deny") {
                    check_wrong_or_missing_key_denied(&stack);
                }
            }

            #[test]
            fn post_body_not_awaited() {
                if let Some(stack) = Stack::start($kind, "body") {
                    check_post_body_decided_without_waiting(&stack);
                }
            }

            #[test]
            fn forged_key_id_stripped() {
                if let Some(stack) = Stack::start($kind, "forged") {
                    check_forged_key_id_stripped(&stack);
                }
            }

            #[test]
            fn keygate_stopped_fails_closed() {
                if let Some(stack) = Stack::start($kind, "down") {
                    check_keygate_stopped_fails_closed(stack);
                }
            }
        }
    };
}

// nginx `auth_request` and Caddy `forward_auth`.
gateway_tests!(nginx, GatewayKind::Nginx);
gateway_tests!(caddy, GatewayKind::Caddy);

// ---------------------------------------------------------------------------
// Envoy `ext_authz` (HTTP service), replayed

fn start_keygate(dir: &TempDir) -> Keygate {
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A, KEY_B]);
    Keygate::start(&keys, FAST_POLL)
}

/// Check request as Envoy's v3 ext_authz HTTP service sends it: the client's
/// method, `path_prefix` (`/ext-authz` in examples/gateways/envoy.yaml) before
/// the client's path and query, header names in lower case, the default
/// headers Host and Authorization, and `content-length: 0` with no body.
fn envoy_check_request(method: &str, authorization: Option<&str>) -> String {
    let authorization = authorization
        .map(|value| format!("authorization: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} /ext-authz/api/v1/items?x=1 HTTP/1.1\r\nhost: api.example\r\n{authorization}\
         x-keygate-key-id: forged\r\ncontent-length: 0\r\n\r\n"
    )
}

#[test]
fn envoy_check_allowed_only_with_200() {
    let dir = TempDir::new("envoy");
    let keygate = start_keygate(&dir);
    let expected_id = key_id_of(&keygate, KEY_A);

    for method in ["GET", "POST", "DELETE", "PATCH"] {
        let bearer = format!("Bearer {KEY_A}");
        let started = Instant::now();
        let response = exchange(
            keygate.auth,
            envoy_check_request(method, Some(&bearer)).as_bytes(),
        )
        .expect("response");
        let elapsed = started.elapsed();
        eprintln!(
            "envoy-shaped {method} check allowed in {elapsed:?} (Envoy's default timeout is 200 ms)"
        );
        // Envoy allows only on exactly 200, so any other 2xx would deny.
        assert_eq!(response.status, 200, "{method}");
        assert_eq!(
            response.header(KEY_ID_HEADER),
            Some(expected_id.as_str()),
            "{method}"
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "{method} took {elapsed:?}"
        );

        for authorization in [None, Some("Bearer test-key-wrong-wrong-wrong-wrong-wrong")] {
            let response = exchange(
                keygate.auth,
                envoy_check_request(method, authorization).as_bytes(),
            )
            .expect("response");
            assert_ne!(response.status, 200, "{method} {authorization:?}");
            assert_eq!(response.status, 401, "{method} {authorization:?}");
            assert!(
                response.header("WWW-Authenticate").is_some(),
                "{method} {authorization:?}"
            );
            assert!(response.header(KEY_ID_HEADER).is_none());
        }
    }
    keygate.assert_no_key_in_logs();
}

#[test]
fn envoy_pooled_connection_reused() {
    let dir = TempDir::new("envoy-pool");
    let keygate = start_keygate(&dir);
    let bearer = format!("Bearer {KEY_A}");
    // Envoy pools its connections to the ext_authz cluster, so its
    // `content-length: 0` must not make keygate close them.
    let mut stream = connect(keygate.auth);
    for (authorization, expected) in [
        (Some(bearer.as_str()), 200),
        (None, 401),
        (Some(bearer.as_str()), 200),
    ] {
        stream
            .write_all(envoy_check_request("POST", authorization).as_bytes())
            .unwrap();
        let response = read_response(&mut stream, false).expect("response on the same connection");
        assert_eq!(response.status, expected, "{authorization:?}");
        assert_ne!(
            response.header("Connection"),
            Some("close"),
            "{authorization:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Traefik ForwardAuth, replayed

/// Request as Traefik's ForwardAuth sends it: `GET` to the fixed address, the
/// client's headers (here including a forged key id), the headers Go's HTTP
/// client adds, and X-Forwarded-* describing the client's request.
fn traefik_auth_request(authorization: Option<&str>) -> String {
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n{authorization}\
         X-Keygate-Key-Id: forged\r\nX-Forwarded-For: 192.0.2.10\r\nX-Forwarded-Host: api.example\r\n\
         X-Forwarded-Method: POST\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Uri: /api/v1/items?x=1\r\n\
         Accept-Encoding: gzip\r\n\r\n"
    )
}

#[test]
fn traefik_check_allowed_with_key_id() {
    let dir = TempDir::new("traefik");
    let keygate = start_keygate(&dir);
    let expected_id = key_id_of(&keygate, KEY_B);

    let bearer = format!("Bearer {KEY_B}");
    let mut stream = connect(keygate.auth);
    stream
        .write_all(traefik_auth_request(Some(&bearer)).as_bytes())
        .unwrap();
    let response = read_response(&mut stream, false).expect("response");
    assert!((200..300).contains(&response.status), "{response:?}");
    // authResponseHeaders copies this onto the request to the service.
    assert_eq!(response.header(KEY_ID_HEADER), Some(expected_id.as_str()));

    // Go's client reuses the connection, and Traefik relays a denial as is.
    stream
        .write_all(traefik_auth_request(None).as_bytes())
        .unwrap();
    let response = read_response(&mut stream, false).expect("response on the same connection");
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header("WWW-Authenticate"),
        Some("Bearer realm=\"keygate\"")
    );
    assert!(
        response.body_text().contains("unauthorized"),
        "{response:?}"
    );
    assert!(response.header(KEY_ID_HEADER).is_none());

    let wrong = traefik_auth_request(Some("Bearer test-key-wrong-wrong-wrong-wrong-wrong"));
    let response = exchange(keygate.auth, wrong.as_bytes()).expect("response");
    assert_eq!(response.status, 401);
    assert!(
        response
            .header("WWW-Authenticate")
            .is_some_and(|challenge| challenge.contains("error=\"invalid_token\""))
    );
    keygate.assert_no_key_in_logs();
}
