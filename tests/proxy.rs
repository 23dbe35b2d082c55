//! Reverse-proxy mode against real upstreams on 127.0.0.1: the Python test
//! upstream in tests/upstream/upstream.py and nginx serving static files.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// RSS ceiling for keygate while it streams 2 GiB, in KiB.
const MAX_RSS_KIB: u64 = 32 * 1024;

/// Size of the large upload and download.
const LARGE_BYTES: u64 = 2 << 30;

/// Block size of the upload pattern; tests/upstream/upstream.py uses the same.
const BLOCK_BYTES: usize = 1 << 20;

/// Python test upstream, killed on drop.
struct TestUpstream {
    child: Child,
    address: SocketAddr,
}

impl TestUpstream {
    fn start() -> TestUpstream {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/upstream.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3 (install it with apt-get install python3)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("port line from the test upstream");
        let port: u16 = line
            .trim()
            .parse()
            .expect("port number from the test upstream");
        TestUpstream {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Requests the upstream has received, asked directly and not through keygate.
    fn request_count(&self) -> u64 {
        let response = exchange(
            self.address,
            b"GET /__count HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n",
        )
        .expect("count from the test upstream");
        let body = response.body_text();
        json_number(&body, "requests").expect("requests in the count")
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts keygate in front of `upstream` with KEY_A and extra `args`.
fn start_proxy(dir: &TempDir, upstream: &str, args: &[&str]) -> Keygate {
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A]);
    let mut all = vec!["--upstream", upstream];
    all.extend_from_slice(args);
    Keygate::start(&keys, &all)
}

fn authorization() -> String {
    format!("Authorization: Bearer {KEY_A}\r\n")
}

/// Extracts a number field from a flat JSON object.
fn json_number(text: &str, field: &str) -> Option<u64> {
    let start = text.find(&format!("\"{field}\": "))? + field.len() + 4;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Extracts a string field from a flat JSON object.
fn json_string(text: &str, field: &str) -> Option<String> {
    let start = text.find(&format!("\"{field}\": \""))? + field.len() + 5;
    let end = text[start..].find('"')?;
    Some(text[start..start + end].to_string())
}

/// Header pairs the echo route reports, as `name: value` lines.
fn echoed_headers(body: &str) -> Vec<String> {
    let start = body.find("\"headers\": [").expect("headers in the echo") + 12;
    let end = body[start..]
        .find("]],")
        .map_or(body.len(), |end| start + end + 1);
    body[start..end]
        .split("], [")
        .map(|pair| {
            let pair = pair.trim_matches(|c| c == '[' || c == ']');
            let (name, value) = pair.split_once("\", \"").unwrap_or((pair, ""));
            format!("{}: {}", name.trim_matches('"'), value.trim_matches('"'))
        })
        .collect()
}

fn has_header(headers: &[String], name: &str) -> bool {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    headers
        .iter()
        .any(|line| line.to_ascii_lowercase().starts_with(&prefix))
}

/// Reads a chunked body from `reader` after its head; `None` when the
/// stream ends before the last chunk.
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(line.trim_end().split(';').next()?, 16).ok()?;
        if size == 0 {
            let mut end = String::new();
            reader.read_line(&mut end).ok()?;
            return (end == "\r\n").then_some(body);
        }
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Reads a response head as text, up to and including the empty line.
fn read_head_text(reader: &mut impl BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return head;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return head;
        }
    }
}

/// Value of a metric line that starts with `series`.
fn metric(keygate: &Keygate, series: &str) -> u64 {
    let (_, text) = curl(&[&format!("http://{}/metrics", keygate.admin())]);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from metrics:\n{text}"))
}

/// Samples keygate's VmRSS from /proc every 50 ms until stopped, keeping the maximum.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max_kib: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kib = Arc::new(AtomicU64::new(0));
        let (stop_flag, max) = (Arc::clone(&stop), Arc::clone(&max_kib));
        let thread = thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                if let Some(kib) = vm_rss_kib(pid) {
                    max.fetch_max(kib, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            stop,
            max_kib,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the largest VmRSS seen, in KiB.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.max_kib.load(Ordering::Relaxed)
    }
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Returns a port on 127.0.0.1 that nothing listens on at the moment of the call.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn headers_rewritten_for_upstream() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-headers");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);

    let raw = format!(
        "PATCH /echo/a%2Fb;p?x=1&y=%20&z HTTP/1.1\r\nHost: api.example:8443\r\n{}\
Connection: keep-alive, X-Hop\r\nX-Hop: secret-hop\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
Trailer: X-Sum\r\nUpgrade: websocket\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\
Proxy-Connection: keep-alive\r\nX-Keygate-Key-Id: sha256:forgedforgedforg\r\n\
X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-End-To-End: kept\r\n\
X-Repeated: one\r\nX-Repeated: two\r\nContent-Length: 5\r\n\r\nhello",
        authorization()
    );
    let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
    assert_eq!(response.status, 200, "{}", response.body_text());
    let body = response.body_text();
    let headers = echoed_headers(&body);

    assert_eq!(json_string(&body, "method").as_deref(), Some("PATCH"));
    assert_eq!(
        json_string(&body, "target").as_deref(),
        Some("/echo/a%2Fb;p?x=1&y=%20&z")
    );
    for removed in [
        "Connection",
        "X-Hop",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Authorization",
    ] {
        assert!(
            !has_header(&headers, removed),
            "{removed} forwarded: {headers:?}"
        );
    }
    let key_ids: Vec<&String> = headers
        .iter()
        .filter(|line| line.starts_with("X-Keygate-Key-Id:"))
        .collect();
    assert_eq!(key_ids.len(), 1, "{headers:?}");
    assert!(key_ids[0].contains("sha256:"), "{headers:?}");
    assert!(!key_ids[0].contains("forged"), "{headers:?}");

    assert!(
        headers.contains(&"Host: api.example:8443".to_string()),
        "{headers:?}"
    );
    assert!(
        headers.contains(&"X-Forwarded-For: 192.0.2.7, 127.0.0.1".to_string()),
        "{headers:?}"
    );
    assert!(
        headers.contains(&"X-Forwarded-Proto: http".to_string()),
        "{headers:?}"
    );
    assert!(
        headers.contains(&"X-Forwarded-Host: api.example:8443".to_string()),
        "{headers:?}"
    );
    assert!(
        headers.contains(&"X-End-To-End: kept".to_string()),
        "{headers:?}"
    );
    let repeated: Vec<&String> = headers
        .iter()
        .filter(|line| line.starts_with("X-Repeated"))
        .collect();
    assert_eq!(
        repeated,
        ["X-Repeated: one", "X-Repeated: two"],
        "{headers:?}"
    );
    assert!(
        headers.contains(&"Content-Length: 5".to_string()),
        "{headers:?}"
    );
    assert_eq!(json_number(&body, "body_length"), Some(5));
    keygate.assert_no_key_in_logs();
}

#[test]
fn pass_authorization_keeps_header() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-pass-auth");
    let keygate = start_proxy(&dir, &upstream.url(), &["--pass-authorization"]);

    let raw = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n",
        authorization()
    );
    let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
    assert_eq!(response.status, 200);
    let headers = echoed_headers(&response.body_text());
    assert!(
        headers.contains(&format!("Authorization: Bearer {KEY_A}")),
        "{headers:?}"
    );
}

#[test]
fn denied_requests_never_reach_upstream() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-denied");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);

    let requests = [
        "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string(),
        "GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key-zzzzzzzzzzzzzzzzzzzzzzzzzzzz\r\nConnection: close\r\n\r\n".to_string(),
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_string(),
        "HEAD /echo HTTP/1.1\r\nHost: x\r\nX-Keygate-Key-Id: sha256:forgedforgedforg\r\nConnection: close\r\n\r\n".to_string(),
    ];
    for raw in &requests {
        let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
        assert_eq!(response.status, 401, "{raw}");
        assert!(response.header("WWW-Authenticate").is_some(), "{raw}");
    }

    // A denied request that waits for 100 Continue gets the 401 instead.
    let mut stream = connect(keygate.auth);
    stream
        .write_all(
            b"PUT /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
    let response = read_response(&mut stream, false).expect("response");
    assert_eq!(response.status, 401);
    assert_eq!(response.header("Connection"), Some("close"));

    assert_eq!(upstream.request_count(), 0);
}

#[test]
fn forged_key_id_replaced() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-forged");
    let keygate = start_proxy(&dir, &upstream.url(), &["--key-id-header", "X-Caller"]);

    let raw = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\nx-caller: sha256:forgedforgedforg\r\nX-CALLER: admin\r\n{}Connection: close\r\n\r\n",
        authorization()
    );
    let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
    assert_eq!(response.status, 200);
    let headers = echoed_headers(&response.body_text());
    let callers: Vec<&String> = headers
        .iter()
        .filter(|line| line.to_ascii_lowercase().starts_with("x-caller:"))
        .collect();
    assert_eq!(callers.len(), 1, "{headers:?}");
    assert!(callers[0].starts_with("X-Caller: sha256:"), "{headers:?}");
    assert!(!callers[0].contains("forged"), "{headers:?}");
}

#[test]
fn chunked_request_body_rechunked() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-chunked-request");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);

    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\n{}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
3;ext=1\r\nabc\r\n1\r\nd\r\n0\r\nX-Trailer: t\r\n\r\n",
        authorization()
    );
    let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
    assert_eq!(response.status, 200);
    let body = response.body_text();
    let headers = echoed_headers(&body);
    assert!(
        headers.contains(&"Transfer-Encoding: chunked".to_string()),
        "{headers:?}"
    );
    assert_eq!(json_number(&body, "body_length"), Some(4));
    // SHA-256 of "abcd".
    assert_eq!(
        json_string(&body, "body_sha256").as_deref(),
        Some("88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589")
    );
}

#[test]
fn invalid_chunked_body_rejected() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-bad-chunk");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);

    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\n{}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        authorization()
    );
    let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
    assert_eq!(response.status, 400);
    assert_eq!(response.header("Connection"), Some("close"));
}

#[test]
fn chunked_response_relayed_by_version() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-chunked-response");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);

    for path in ["/chunked", "/close-delimited"] {
        let mut stream = BufReader::new(connect(keygate.auth));
        let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{}\r\n", authorization());
        stream.get_mut().write_all(raw.as_bytes()).unwrap();
        let head = read_head_text(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(
            head.contains("Transfer-Encoding: chunked\r\n"),
            "{path}: {head}"
        );
        assert!(!head.contains("Trailer"), "{path}: {head}");
        let body = read_chunked(&mut stream).expect("complete chunked body");
        let expected: &[u8] = if path == "/chunked" {
            b"hello chunked world"
        } else {
            b"until the connection closes"
        };
        assert_eq!(body, expected, "{path}");

        // The client connection stays open for the next request.
        stream.get_mut().write_all(raw.as_bytes()).unwrap();
        let head = read_head_text(&mut stream);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "{path} second request: {head}"
        );
    }

    let raw = format!(
        "GET /chunked HTTP/1.0\r\nHost: x\r\n{}\r\n",
        authorization()
    );
    let mut stream = connect(keygate.auth);
    stream.write_all(raw.as_bytes()).unwrap();
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .expect("close-delimited body");
    assert!(!text.contains("Transfer-Encoding"), "{text}");
    assert!(text.contains("Connection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello chunked world"), "{text}");
}

#[test]
fn client_keep_alive_across_requests() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-keep-alive");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);

    let mut stream = connect(keygate.auth);
    let mut ports = Vec::new();
    for _ in 0..3 {
        let raw = format!("GET /echo HTTP/1.1\r\nHost: x\r\n{}\r\n", authorization());
        stream.write_all(raw.as_bytes()).unwrap();
        let response = read_response(&mut stream, false).expect("response");
        assert_eq!(response.status, 200);
        ports.push(json_number(&response.body_text(), "connection_port").unwrap());
    }
    // keygate reused one upstream connection for all three.
    assert!(ports.iter().all(|&port| port == ports[0]), "{ports:?}");

    let raw = format!("HEAD /echo HTTP/1.1\r\nHost: x\r\n{}\r\n", authorization());
    stream.write_all(raw.as_bytes()).unwrap();
    let response = read_response(&mut stream, true).expect("HEAD response");
    assert_eq!(response.status, 200);
    assert!(response.header("Content-Length").is_some());

    for code in ["204", "304"] {
        let raw = format!(
            "GET /status?code={code} HTTP/1.1\r\nHost: x\r\n{}\r\n",
            authorization()
        );
        stream.write_all(raw.as_bytes()).unwrap();
        let response = read_response(&mut stream, true).expect("bodiless response");
        assert_eq!(response.status.to_string(), code);
        assert!(
            response.header("Transfer-Encoding").is_none(),
            "{response:?}"
        );
    }

    // An HTTP/1.0 client that asks for keep-alive gets it.
    let raw = format!(
        "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n{}\r\n",
        authorization()
    );
    stream.write_all(raw.as_bytes()).unwrap();
    let response = read_response(&mut stream, false).expect("HTTP/1.0 response");
    assert_eq!(response.header("Connection"), Some("keep-alive"));
    let raw = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n",
        authorization()
    );
    stream.write_all(raw.as_bytes()).unwrap();
    let response = read_response(&mut stream, false).expect("last response");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));

    assert!(metric(&keygate, "keygate_upstream_responses_total{class=\"2xx\"}") >= 5);
    assert!(metric(&keygate, "keygate_upstream_responses_total{class=\"3xx\"}") >= 1);
    assert!(metric(&keygate, "keygate_upstream_response_seconds_count") >= 7);
}

#[test]
fn expect_continue_after_authorisation() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-expect");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);

    let mut stream = BufReader::new(connect(keygate.auth));
    let raw = format!(
        "PUT /echo HTTP/1.1\r\nHost: x\r\n{}Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        authorization()
    );
    stream.get_mut().write_all(raw.as_bytes()).unwrap();
    let interim = read_head_text(&mut stream);
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.get_mut().write_all(b"hello").unwrap();
    let response = read_response(&mut stream, false).expect("final response");
    assert_eq!(response.status, 200);
    let body = response.body_text();
    assert!(!has_header(&echoed_headers(&body), "Expect"), "{body}");
    assert_eq!(json_number(&body, "body_length"), Some(5));
}

#[test]
fn slow_upstream_gets_504() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-slow");
    let keygate = start_proxy(&dir, &upstream.url(), &["--upstream-timeout", "1s"]);

    let raw = format!(
        "GET /slow?seconds=4 HTTP/1.1\r\nHost: x\r\n{}\r\n",
        authorization()
    );
    let mut stream = connect(keygate.auth);
    stream.write_all(raw.as_bytes()).unwrap();
    let response = read_response(&mut stream, false).expect("response");
    assert_eq!(response.status, 504);
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert!(
        response.body_text().contains("\"upstream_timeout\""),
        "{}",
        response.body_text()
    );
    assert!(keygate.wait_for_log("sent no response head within 1s", Duration::from_secs(5)));
    assert!(keygate.logs().contains(&upstream.address.to_string()));
    assert_eq!(
        metric(&keygate, "keygate_upstream_errors_total{kind=\"timeout\"}"),
        1
    );

    // The connection is still usable after a 504 for a request without a body.
    let raw = format!("GET /echo HTTP/1.1\r\nHost: x\r\n{}\r\n", authorization());
    stream.write_all(raw.as_bytes()).unwrap();
    assert_eq!(
        read_response(&mut stream, false)
            .expect("next response")
            .status,
        200
    );
}

#[test]
fn closed_upstream_port_gets_502() {
    let dir = TempDir::new("proxy-closed");
    let port = closed_port();
    let keygate = start_proxy(&dir, &format!("http://127.0.0.1:{port}"), &[]);

    let raw = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n",
        authorization()
    );
    let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
    assert_eq!(response.status, 502);
    assert!(
        response.body_text().contains("\"bad_gateway\""),
        "{}",
        response.body_text()
    );
    assert!(keygate.wait_for_log(
        &format!("connecting to upstream 127.0.0.1:{port} failed"),
        Duration::from_secs(5)
    ));
    assert_eq!(
        metric(&keygate, "keygate_upstream_errors_total{kind=\"connect\"}"),
        1
    );
}

#[test]
fn upstream_crash_mid_body_not_complete() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-crash");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);

    // Content-Length body: the client gets fewer bytes, then the connection closes.
    let raw = format!(
        "GET /crash-length HTTP/1.1\r\nHost: x\r\n{}\r\n",
        authorization()
    );
    let mut stream = connect(keygate.auth);
    stream.write_all(raw.as_bytes()).unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("Content-Length: 100000\r\n"), "{text}");
    let body_length = text
        .split_once("\r\n\r\n")
        .map_or(0, |(_, body)| body.len());
    assert!(body_length < 100_000, "{body_length}");

    // Chunked body: curl reports the stream ending without its last chunk.
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {KEY_A}"))
        .arg(format!("http://{}/crash-chunked", keygate.auth))
        .status()
        .expect("run curl");
    assert_eq!(
        output.code(),
        Some(18),
        "curl should report a partial transfer"
    );

    assert!(
        keygate.wait_for_log("broke off", Duration::from_secs(5)),
        "{}",
        keygate.logs()
    );
    assert_eq!(
        metric(
            &keygate,
            "keygate_upstream_errors_total{kind=\"body_interrupted\"}"
        ),
        2
    );
}

#[test]
fn stale_pooled_connection_retried_when_safe() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-retry");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);

    let get = |path: &str| {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n",
            authorization()
        );
        exchange(keygate.auth, raw.as_bytes()).expect("response")
    };
    // After /drop-next the upstream closes the pooled connection at its
    // next request without a response; a GET is sent again on a new one.
    // keygate returns an upstream connection to its pool just after the
    // client has the whole response, so each step waits a moment for that.
    let settle = || std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get("/drop-next").status, 200);
    settle();
    assert_eq!(get("/echo").status, 200);

    // A POST is not repeated, since the upstream may have acted on it.
    settle();
    assert_eq!(get("/drop-next").status, 200);
    settle();
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\n{}Content-Length: 2\r\nConnection: close\r\n\r\nhi",
        authorization()
    );
    let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
    assert_eq!(response.status, 502);
    assert_eq!(
        metric(&keygate, "keygate_upstream_errors_total{kind=\"closed\"}"),
        1
    );
}

#[test]
fn large_upload_streams_with_bounded_memory() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-upload");
    let keygate = start_proxy(&dir, &upstream.url(), &[]);
    let blocks = LARGE_BYTES / BLOCK_BYTES as u64;

    let sampler = RssSampler::start(keygate.pid());
    let mut stream = connect(keygate.auth);
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST /upload?blocks={blocks} HTTP/1.1\r\nHost: x\r\n{}Content-Length: {LARGE_BYTES}\r\nConnection: close\r\n\r\n",
        authorization()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut block: Vec<u8> = (0..BLOCK_BYTES)
        .map(|i| ((i * 31 + (i >> 8)) & 0xFF) as u8)
        .collect();
    for index in 0..blocks {
        block[..8].copy_from_slice(&index.to_be_bytes());
        stream.write_all(&block).expect("upload block");
    }
    let response = read_response(&mut stream, false).expect("upload response");
    let max_rss = sampler.finish();

    assert_eq!(response.status, 200, "{}", response.body_text());
    let body = response.body_text();
    assert_eq!(json_number(&body, "length"), Some(LARGE_BYTES), "{body}");
    let received = json_string(&body, "sha256").expect("sha256");
    assert_eq!(
        Some(received),
        json_string(&body, "expected_sha256"),
        "{body}"
    );
    assert!(
        max_rss > 0 && max_rss < MAX_RSS_KIB,
        "keygate VmRSS peaked at {max_rss} KiB"
    );
}

/// nginx serving files from a temporary directory on a free 127.0.0.1 port.
struct Nginx {
    child: Child,
    address: SocketAddr,
}

impl Nginx {
    /// Starts nginx, or returns `None` after a message when nginx is not
    /// installed and KEYGATE_REQUIRE_GATEWAYS is unset.
    fn start(dir: &TempDir) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|path| Path::new(path).exists());
        let Some(binary) = binary else {
            if std::env::var_os("KEYGATE_REQUIRE_GATEWAYS").is_some() {
                panic!(
                    "nginx is not installed but KEYGATE_REQUIRE_GATEWAYS is set; apt-get install nginx-light"
                );
            }
            eprintln!("skipping: nginx is not installed (apt-get install nginx-light)");
            return None;
        };

        let port = closed_port();
        let root = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {root}/error.log;\npid {root}/nginx.pid;\n\
events {{ worker_connections 64; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {root}/client_body;\n  proxy_temp_path {root}/proxy;\n\
  fastcgi_temp_path {root}/fastcgi;\n  uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n\
  server {{\n    listen 127.0.0.1:{port};\n    root {root}/www;\n  }}\n}}\n"
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(binary)
            .args([
                "-e",
                &format!("{root}/error.log"),
                "-p",
                &root.to_string(),
                "-c",
            ])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let mut nginx = Nginx { child, address };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(address).is_ok()
        });
        if !up {
            let _ = nginx.child.kill();
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            panic!("nginx did not start listening on {address}; error log:\n{log}");
        }
        Some(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates the nginx document root with a small random-looking file.
fn nginx_site(dir: &TempDir) -> Vec<u8> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..3 * BLOCK_BYTES + 17)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(www.join("data.bin"), &data).unwrap();
    data
}

#[test]
fn nginx_files_ranges_and_conditionals() {
    let dir = TempDir::new("proxy-nginx");
    let data = nginx_site(&dir);
    let Some(nginx) = Nginx::start(&dir) else {
        return;
    };
    let keygate = start_proxy(&dir, &format!("http://{}", nginx.address), &[]);
    let url = format!("http://{}/data.bin", keygate.auth);
    let bearer = format!("Authorization: Bearer {KEY_A}");

    let output = Command::new("curl")
        .args(["-s", "-S", "--max-time", "30", "-H", &bearer, &url])
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stdout == data,
        "downloaded bytes differ from the file"
    );

    let mut stream = connect(keygate.auth);
    let raw = format!(
        "GET /data.bin HTTP/1.1\r\nHost: x\r\n{}Range: bytes=100-199\r\n\r\n",
        authorization()
    );
    stream.write_all(raw.as_bytes()).unwrap();
    let range = read_response(&mut stream, false).expect("range response");
    assert_eq!(range.status, 206);
    assert_eq!(
        range.header("Content-Range").map(str::to_string),
        Some(format!("bytes 100-199/{}", data.len()))
    );
    assert_eq!(range.body, &data[100..200]);

    let raw = format!(
        "HEAD /data.bin HTTP/1.1\r\nHost: x\r\n{}\r\n",
        authorization()
    );
    stream.write_all(raw.as_bytes()).unwrap();
    let head = read_response(&mut stream, true).expect("HEAD response");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Content-Length").map(str::to_string),
        Some(data.len().to_string())
    );
    let etag = head.header("ETag").expect("ETag from nginx").to_string();
    let modified = head
        .header("Last-Modified")
        .expect("Last-Modified from nginx")
        .to_string();

    for condition in [
        format!("If-None-Match: {etag}"),
        format!("If-Modified-Since: {modified}"),
    ] {
        let raw = format!(
            "GET /data.bin HTTP/1.1\r\nHost: x\r\n{}{condition}\r\n\r\n",
            authorization()
        );
        stream.write_all(raw.as_bytes()).unwrap();
        let response = read_response(&mut stream, true).expect("conditional response");
        assert_eq!(response.status, 304, "{condition}");
    }

    // The connection still frames correctly after the bodiless responses.
    let raw = format!(
        "GET /data.bin HTTP/1.1\r\nHost: x\r\n{}Range: bytes=0-9\r\nConnection: close\r\n\r\n",
        authorization()
    );
    stream.write_all(raw.as_bytes()).unwrap();
    let last = read_response(&mut stream, false).expect("last response");
    assert_eq!(last.body, &data[..10]);

    let denied = exchange(
        keygate.auth,
        b"GET /data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(denied.status, 401);
}

#[test]
fn large_download_streams_with_bounded_memory() {
    let dir = TempDir::new("proxy-download");
    nginx_site(&dir);
    // A sparse file: 2 GiB to read, no disk space used.
    let file = std::fs::File::create(dir.join("www/large.bin")).unwrap();
    file.set_len(LARGE_BYTES).unwrap();
    let Some(nginx) = Nginx::start(&dir) else {
        return;
    };
    let keygate = start_proxy(&dir, &format!("http://{}", nginx.address), &[]);

    let sampler = RssSampler::start(keygate.pid());
    let output = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "120",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {KEY_A}"))
        .arg(format!("http://{}/large.bin", keygate.auth))
        .output()
        .expect("run curl");
    let max_rss = sampler.finish();

    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(summary, format!("200 {LARGE_BYTES}"));
    assert!(
        max_rss > 0 && max_rss < MAX_RSS_KIB,
        "keygate VmRSS peaked at {max_rss} KiB"
    );
}

#[test]
fn stalled_upload_gets_408_at_io_timeout() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-stalled-upload");
    let keygate = start_proxy(&dir, &upstream.url(), &["--io-timeout", "1s"]);

    // Ten of the hundred declared body bytes, then silence.
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\n{}Content-Length: 100\r\n\r\n0123456789",
        authorization()
    );
    let started = Instant::now();
    let mut stream = connect(keygate.auth);
    stream.write_all(raw.as_bytes()).unwrap();
    let response = read_response(&mut stream, false).expect("response");
    assert_eq!(response.status, 408);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "408 took {:?}",
        started.elapsed()
    );
    assert!(
        read_until_close(&mut stream).is_some(),
        "connection left open"
    );
}

/// Sends a proxied request that the upstream answers after `seconds`, and
/// returns the connection once keygate has forwarded it.
fn start_slow_request(keygate: &Keygate, seconds: u32) -> TcpStream {
    let raw = format!(
        "GET /slow?seconds={seconds} HTTP/1.1\r\nHost: x\r\n{}\r\n",
        authorization()
    );
    let mut stream = connect(keygate.auth);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    // Give keygate time to send the request upstream before the signal.
    std::thread::sleep(Duration::from_millis(300));
    stream
}

#[test]
fn shutdown_waits_for_inflight_request() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-shutdown-wait");
    let mut keygate = start_proxy(&dir, &upstream.url(), &["--shutdown-timeout", "10s"]);
    let mut stream = start_slow_request(&keygate, 2);

    keygate.signal("TERM");
    let response = read_response(&mut stream, false).expect("in-flight request finished");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    let status = keygate.wait_exit(Duration::from_secs(5)).expect("exited");
    assert_eq!(status.code(), Some(0));
    assert!(
        keygate
            .logs()
            .contains("waiting up to 10s for 1 open connection"),
        "{}",
        keygate.logs()
    );
}

#[test]
fn shutdown_timeout_cuts_long_request() {
    let upstream = TestUpstream::start();
    let dir = TempDir::new("proxy-shutdown-cut");
    let mut keygate = start_proxy(&dir, &upstream.url(), &["--shutdown-timeout", "1s"]);
    let _stream = start_slow_request(&keygate, 8);

    let started = Instant::now();
    keygate.signal("TERM");
    let status = keygate
        .wait_exit(Duration::from_secs(5))
        .expect("exited after the timeout");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "exited before --shutdown-timeout: {:?}",
        started.elapsed()
    );
    assert!(keygate.logs().contains("still open"), "{}", keygate.logs());
}
