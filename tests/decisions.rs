//! Allow and deny decisions of forward-auth mode, over real sockets and curl.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

fn start(dir: &TempDir) -> Keygate {
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A, KEY_B]);
    Keygate::start(&keys, FAST_POLL)
}

#[test]
fn valid_key_allowed_with_key_id() {
    let dir = TempDir::new("allow");
    let keygate = start(&dir);

    let raw =
        format!("GET /any/path?q=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n\r\n");
    let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
    assert_eq!(response.status, 200);
    assert!(response.body.is_empty());
    let id = response.header("X-Keygate-Key-Id").expect("key id header");
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(id.len(), 23, "{id}");
    keygate.assert_no_key_in_logs();
}

#[test]
fn credential_cases_denied() {
    let dir = TempDir::new("deny");
    let keygate = start(&dir);

    let cases: &[(&str, &str, bool)] = &[
        ("no header", "", false),
        (
            "unknown key",
            "Authorization: Bearer test-key-zzzzzzzzzzzzzzzzzzzzzzzzzzzz\r\n",
            true,
        ),
        ("empty token", "Authorization: Bearer \r\n", false),
        ("scheme only", "Authorization: Bearer\r\n", false),
        (
            "basic scheme",
            "Authorization: Basic dXNlcjpwYXNz\r\n",
            false,
        ),
        (
            "key without scheme",
            &format!("Authorization: {KEY_A}\r\n"),
            false,
        ),
        (
            "extra words",
            &format!("Authorization: Bearer {KEY_A} extra\r\n"),
            true,
        ),
        (
            "two headers",
            &format!("Authorization: Bearer {KEY_A}\r\nAuthorization: Bearer {KEY_A}\r\n"),
            true,
        ),
        (
            "prefix of key",
            &format!("Authorization: Bearer {}\r\n", &KEY_A[..KEY_A.len() - 1]),
            true,
        ),
        (
            "key plus suffix",
            &format!("Authorization: Bearer {KEY_A}x\r\n"),
            true,
        ),
        (
            "wrong case key",
            &format!("Authorization: Bearer {}\r\n", KEY_A.to_uppercase()),
            true,
        ),
    ];
    for (name, header, token_presented) in cases {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{header}\r\n");
        let response =
            exchange(keygate.auth, raw.as_bytes()).unwrap_or_else(|| panic!("{name}: no response"));
        assert_eq!(response.status, 401, "{name}");
        let challenge = response
            .header("WWW-Authenticate")
            .unwrap_or_else(|| panic!("{name}: no challenge"));
        assert!(
            challenge.starts_with("Bearer realm=\"keygate\""),
            "{name}: {challenge}"
        );
        assert_eq!(
            challenge.contains("error=\"invalid_token\""),
            *token_presented,
            "{name}: {challenge}"
        );
        assert_eq!(
            response.header("Content-Type"),
            Some("application/json"),
            "{name}"
        );
        assert!(
            response
                .body_text()
                .starts_with("{\"error\":\"unauthorized\""),
            "{name}"
        );
        assert!(response.header("X-Keygate-Key-Id").is_none(), "{name}");
    }
    keygate.assert_no_key_in_logs();
}

#[test]
fn scheme_case_and_spaces_accepted() {
    let dir = TempDir::new("scheme");
    let keygate = start(&dir);
    for header in [format!("bearer {KEY_A}"), format!("BEARER    {KEY_B}")] {
        let raw = format!("GET / HTTP/1.1\r\nAuthorization: {header}\r\n\r\n");
        assert_eq!(
            exchange(keygate.auth, raw.as_bytes()).unwrap().status,
            200,
            "{header}"
        );
    }
}

#[test]
fn every_method_and_path_decided() {
    let dir = TempDir::new("methods");
    let keygate = start(&dir);
    for method in [
        "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "BREW",
    ] {
        for target in ["/", "/admin", "/x?y=z", "*", "http://example.test/abs"] {
            let allowed =
                format!("{method} {target} HTTP/1.1\r\nAuthorization: Bearer {KEY_A}\r\n\r\n");
            assert_eq!(
                exchange(keygate.auth, allowed.as_bytes()).unwrap().status,
                200,
                "{method} {target}"
            );
            let denied = format!("{method} {target} HTTP/1.1\r\n\r\n");
            assert_eq!(
                exchange(keygate.auth, denied.as_bytes()).unwrap().status,
                401,
                "{method} {target}"
            );
        }
    }
}

#[test]
fn head_gets_headers_without_body() {
    let dir = TempDir::new("head");
    let keygate = start(&dir);
    let mut stream = connect(keygate.auth);
    stream
        .write_all(b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let head = read_response(&mut stream, true).unwrap();
    assert_eq!(head.status, 401);
    assert!(head.header("WWW-Authenticate").is_some());
    let length: usize = head.header("Content-Length").unwrap().parse().unwrap();
    assert!(length > 0);
    // If HEAD had sent a body, these bytes would be read as the next status line.
    let next = read_response(&mut stream, false).unwrap();
    assert_eq!(next.status, 401);
    assert_eq!(next.body.len(), length);
}

#[test]
fn keep_alive_decides_each_request() {
    let dir = TempDir::new("keepalive");
    let keygate = start(&dir);
    let mut stream = connect(keygate.auth);
    for (key, expected) in [
        (Some(KEY_A), 200),
        (None, 401),
        (Some(KEY_B), 200),
        (Some("test-key-nope-nope-nope-nope"), 401),
        (Some(KEY_A), 200),
    ] {
        let authorization = key
            .map(|key| format!("Authorization: Bearer {key}\r\n"))
            .unwrap_or_default();
        stream
            .write_all(format!("GET / HTTP/1.1\r\n{authorization}\r\n").as_bytes())
            .unwrap();
        let response = read_response(&mut stream, false).expect("response on the same connection");
        assert_eq!(response.status, expected, "{key:?}");
        assert!(response.header("Connection").is_none());
    }
}

#[test]
fn http10_closes_unless_keep_alive() {
    let dir = TempDir::new("http10");
    let keygate = start(&dir);
    let mut stream = connect(keygate.auth);
    stream
        .write_all(
            format!(
                "GET / HTTP/1.0\r\nConnection: keep-alive\r\nAuthorization: Bearer {KEY_A}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let response = read_response(&mut stream, false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("keep-alive"));

    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let response = read_response(&mut stream, false).unwrap();
    assert_eq!(response.status, 401);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(
        read_response(&mut stream, false).is_none(),
        "connection should be closed"
    );
}

#[test]
fn declared_body_answered_without_waiting() {
    let dir = TempDir::new("body");
    let keygate = start(&dir);
    let mut stream = connect(keygate.auth);
    // What nginx auth_request sends for a POST: the client's Content-Length and no body.
    let started = Instant::now();
    stream.write_all(format!("POST /upload HTTP/1.1\r\nContent-Length: 5000\r\nAuthorization: Bearer {KEY_A}\r\n\r\n").as_bytes()).unwrap();
    let response = read_response(&mut stream, false).expect("response");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answer took {:?}",
        started.elapsed()
    );
    assert!(
        read_response(&mut stream, false).is_none(),
        "connection should be closed"
    );
}

#[test]
fn curl_allows_and_denies() {
    let dir = TempDir::new("curl");
    let keygate = start(&dir);
    let url = format!("http://{}/document/42", keygate.auth);
    let (status, _) = curl(&["-H", &format!("Authorization: Bearer {KEY_A}"), &url]);
    assert_eq!(status, 200);
    let (status, body) = curl(&[&url]);
    assert_eq!(status, 401);
    assert!(body.contains("unauthorized"), "{body}");
    let (status, _) = curl(&[
        "-H",
        "Authorization: Bearer wrong-key-wrong-key-wrong",
        &url,
    ]);
    assert_eq!(status, 401);
    let (status, _) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        "payload",
        "-H",
        &format!("Authorization: Bearer {KEY_B}"),
        &url,
    ]);
    assert_eq!(status, 200);
    let (status, _) = curl(&["-I", "-H", &format!("Authorization: Bearer {KEY_B}"), &url]);
    assert_eq!(status, 200);
    keygate.assert_no_key_in_logs();
}
