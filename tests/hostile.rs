//! Hostile and broken clients: exact bytes over a real socket to the built
//! binary. After each case a normal client must still get `200` and the
//! process must still run.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Maximum time a case may take to get a response that needs no waiting on
/// the client. Every timeout keygate could wrongly wait for is longer.
const PROMPT: Duration = Duration::from_secs(2);

/// Largest RSS growth, in KiB, accepted over a hostile case. The cases send
/// far more than this, so a server that buffered their bytes would exceed it.
const MAX_RSS_GROWTH_KIB: u64 = 8 * 1024;

fn start(dir: &TempDir, args: &[&str]) -> Keygate {
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A, KEY_B]);
    Keygate::start(&keys, args)
}

/// Sends `raw` on a new connection, reads one response, and asserts that
/// the connection then closes with nothing more sent.
fn assert_answered_then_closed(address: SocketAddr, raw: &[u8], case: &str) -> u16 {
    let mut stream = connect(address);
    stream
        .write_all(raw)
        .unwrap_or_else(|error| panic!("{case}: write failed: {error}"));
    let response = read_response(&mut stream, false)
        .unwrap_or_else(|| panic!("{case}: no response, only a close or a timeout"));
    let rest = read_until_close(&mut stream)
        .unwrap_or_else(|| panic!("{case}: connection still open after {}", response.status));
    assert!(
        rest.is_empty(),
        "{case}: bytes after the response: {:?}",
        String::from_utf8_lossy(&rest)
    );
    response.status
}

/// Raises the soft descriptor limit of this process, which children inherit,
/// to at least `needed`, or fails with the command that fixes it.
fn require_descriptors(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_cur < needed && limit.rlim_max >= needed {
        limit.rlim_cur = needed;
        // SAFETY: `limit` is a valid rlimit within the hard limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} file descriptors but the hard limit is {}; raise it with ulimit -Hn",
        limit.rlim_max
    );
}

/// Makes closing `stream` send a reset instead of a FIN.
fn set_reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor stays open while `stream` lives, and the value
    // points to a `linger` of the length passed.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "setsockopt(SO_LINGER) failed");
}

/// Sends `raw` from a second thread, ignoring write errors, because the
/// server may close before the client has written everything.
fn send_in_background(address: SocketAddr, raw: Vec<u8>) -> (TcpStream, thread::JoinHandle<()>) {
    let stream = connect(address);
    let mut writer = stream.try_clone().unwrap();
    let handle = thread::spawn(move || {
        let _ = writer.write_all(&raw);
    });
    (stream, handle)
}

#[test]
fn huge_content_length_answered_at_once() {
    let dir = TempDir::new("huge-length");
    let mut keygate = start(&dir, &[]);
    keygate.assert_serving();
    let rss_before = rss_kib(keygate.pid());

    for length in ["100000000000", "18446744073709551615"] {
        for _ in 0..20 {
            let raw = format!(
                "POST / HTTP/1.1\r\nContent-Length: {length}\r\nAuthorization: Bearer {KEY_A}\r\n\r\n"
            );
            let started = Instant::now();
            let status = assert_answered_then_closed(keygate.auth, raw.as_bytes(), length);
            assert_eq!(status, 200, "Content-Length: {length}");
            assert!(
                started.elapsed() < PROMPT,
                "Content-Length: {length} answered after {:?}",
                started.elapsed()
            );
        }
    }

    let growth = rss_kib(keygate.pid()).saturating_sub(rss_before);
    assert!(growth < MAX_RSS_GROWTH_KIB, "RSS grew by {growth} KiB");
    keygate.assert_serving();
}

#[test]
fn unsupported_versions_leave_nothing_behind() {
    let dir = TempDir::new("versions");
    let mut keygate = start(&dir, &[]);
    keygate.assert_serving();
    let pid = keygate.pid();
    let threads_before = thread_count(pid);
    let fds_before = fd_count(pid);

    let cases: &[(&[u8], Option<u16>)] = &[
        (b"GET / HTTP/2.0\r\n\r\n", Some(505)),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(505)),
        (b"GET / HTTP/3.0\r\n\r\n", Some(505)),
        (b"GET / HTTP/1.2\r\n\r\n", Some(505)),
        (b"GET /\r\n", Some(400)),
        (b"GET /\r\n\r\n", Some(400)),
        (b"GET / HTTP/x.y\r\n\r\n", Some(400)),
        (b"GET / HTTP/1.1.1\r\n\r\n", Some(400)),
        (b"GET / http/1.1\r\n\r\n", None),
        (b"GET / FOO/1.1\r\n\r\n", Some(400)),
        (b"GET / HTTP/\r\n\r\n", Some(400)),
    ];
    for round in 0..200 {
        let (raw, expected) = cases[round % cases.len()];
        let case = String::from_utf8_lossy(raw);
        let status = assert_answered_then_closed(keygate.auth, raw, &case);
        match expected {
            Some(expected) => assert_eq!(status, expected, "{case:?}"),
            None => assert!(status == 400 || status == 505, "{case:?}: {status}"),
        }
    }

    // Closing connections finish their lingering close within 2 s.
    let fds_settled = wait_until(Duration::from_secs(5), || fd_count(pid) <= fds_before + 4);
    assert!(
        fds_settled,
        "descriptors grew from {fds_before} to {}",
        fd_count(pid)
    );
    // Idle workers exit only after 60 s, so the count cannot return to its
    // start. A new worker starts only when every existing one is still busy
    // closing an earlier connection, so on a loaded machine a few more
    // appear, but never one per request.
    let threads_after = thread_count(pid);
    assert!(
        threads_after <= threads_before + 32,
        "threads grew from {threads_before} to {threads_after}"
    );
    keygate.assert_serving();
}

#[test]
fn oversized_header_sections_get_431() {
    let dir = TempDir::new("oversized");
    let mut keygate = start(&dir, &[]);
    keygate.assert_serving();
    let rss_before = rss_kib(keygate.pid());

    let mut long_line = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    long_line.resize(long_line.len() + (1 << 20), b'a');
    long_line.extend_from_slice(b"\r\n\r\n");

    let mut many_headers = b"GET / HTTP/1.1\r\n".to_vec();
    for index in 0..100_000 {
        many_headers.extend_from_slice(format!("X-{index}: v\r\n").as_bytes());
    }
    many_headers.extend_from_slice(b"\r\n");

    for (case, raw) in [
        ("one 1 MiB line", &long_line),
        ("100000 headers", &many_headers),
    ] {
        for _ in 0..3 {
            let (mut stream, writer) = send_in_background(keygate.auth, raw.clone());
            let response =
                read_response(&mut stream, false).unwrap_or_else(|| panic!("{case}: no response"));
            assert_eq!(response.status, 431, "{case}");
            assert_eq!(response.header("Connection"), Some("close"), "{case}");
            assert!(
                read_until_close(&mut stream).is_some(),
                "{case}: connection still open"
            );
            writer.join().unwrap();
        }
    }

    let growth = rss_kib(keygate.pid()).saturating_sub(rss_before);
    assert!(growth < MAX_RSS_GROWTH_KIB, "RSS grew by {growth} KiB");
    keygate.assert_serving();
}

#[test]
fn slow_and_silent_clients_closed_at_deadline() {
    const SILENT_CONNECTIONS: usize = 500;
    require_descriptors(4 * SILENT_CONNECTIONS as u64);
    let dir = TempDir::new("slow");
    let mut keygate = start(&dir, &["--header-timeout", "1s"]);
    keygate.assert_serving();

    // One byte per second never completes a head within the 1 s deadline.
    let started = Instant::now();
    let mut slow = connect(keygate.auth);
    let mut writer = slow.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        for byte in b"GET / HTTP/1.1\r\n\r\n" {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_secs(1));
        }
    });
    let response = read_response(&mut slow, false).expect("slow client: no response");
    assert_eq!(response.status, 408);
    assert!(
        read_until_close(&mut slow).is_some(),
        "slow client: connection still open"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow client closed after {:?}",
        started.elapsed()
    );
    trickle.join().unwrap();

    let silent: Vec<TcpStream> = (0..SILENT_CONNECTIONS)
        .map(|_| connect(keygate.auth))
        .collect();
    let started = Instant::now();
    assert_eq!(status_with_key(keygate.auth, Some(KEY_A)), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a normal client waited {:?} behind {SILENT_CONNECTIONS} silent connections",
        started.elapsed()
    );

    for (index, mut stream) in silent.into_iter().enumerate() {
        let response = read_response(&mut stream, false)
            .unwrap_or_else(|| panic!("silent connection {index}: no 408"));
        assert_eq!(response.status, 408, "silent connection {index}");
        assert!(
            read_until_close(&mut stream).is_some(),
            "silent connection {index} still open"
        );
    }
    keygate.assert_serving();
}

#[test]
fn connection_flood_past_cap_gets_503() {
    const CAP: usize = 20;
    let dir = TempDir::new("flood");
    // The occupying connections send nothing, so a header timeout longer than
    // the test keeps them open until the test closes them.
    let mut keygate = start(
        &dir,
        &["--max-connections", "20", "--header-timeout", "60s"],
    );
    keygate.assert_serving();
    let pid = keygate.pid();

    let mut occupying: Vec<TcpStream> = (0..2 * CAP).map(|_| connect(keygate.auth)).collect();
    // The accept thread sends its 503s in accept order, so once one more
    // connection gets its 503, every earlier rejection has been sent.
    let mut probe = connect(keygate.auth);
    let response = read_response(&mut probe, false).expect("probe past the cap: no response");
    assert_eq!(response.status, 503);
    drop(probe);

    let mut rejected = 0;
    for stream in &mut occupying {
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        if let Some(response) = read_response(stream, false) {
            assert_eq!(response.status, 503);
            assert_eq!(response.header("Retry-After"), Some("1"));
            assert!(
                read_until_close(stream).is_some(),
                "a 503 connection stayed open"
            );
            rejected += 1;
        }
    }
    // The worker of the start-up check may still be closing its connection
    // when the flood arrives, and then serves none of the flood.
    assert!(
        (CAP..=CAP + 1).contains(&rejected),
        "{rejected} of {} connections rejected with a cap of {CAP}",
        2 * CAP
    );

    let workers = threads_named(pid, "keygate-auth-wo");
    assert!(
        workers <= CAP,
        "{workers} auth worker threads for a cap of {CAP}"
    );
    let threads = thread_count(pid);
    assert!(threads <= CAP + 10, "{threads} threads for a cap of {CAP}");

    drop(occupying);
    assert!(
        eventually_status(keygate.auth, Some(KEY_A), 200, Duration::from_secs(5)),
        "no 200 within 5 s after the flood closed"
    );
    keygate.assert_serving();
}

#[test]
fn descriptor_exhaustion_survived() {
    const DESCRIPTOR_LIMIT: &str = "--nofile=64";
    const CONNECTIONS: usize = 100;
    let dir = TempDir::new("nofile");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A, KEY_B]);

    let mut wrapper = Command::new("prlimit");
    wrapper.args([DESCRIPTOR_LIMIT, "--", KEYGATE]);
    let command = Keygate::command(wrapper, &["--key-file", keys.to_str().unwrap()], &[]);
    let mut keygate = Keygate::spawn(command);
    keygate.assert_serving();

    let idle: Vec<TcpStream> = (0..CONNECTIONS).map(|_| connect(keygate.auth)).collect();
    assert!(
        keygate.wait_for_log("Too many open files", Duration::from_secs(5)),
        "no accept failure logged with {CONNECTIONS} idle connections under {DESCRIPTOR_LIMIT}; log:\n{}",
        keygate.logs()
    );
    // Accept retries every 50 ms while descriptors stay exhausted.
    thread::sleep(Duration::from_secs(3));
    let warnings = keygate
        .logs()
        .lines()
        .filter(|line| line.contains("accepting a connection on the auth listener failed"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} accept-failure warnings in 3 s; expected rate-limited lines"
    );

    drop(idle);
    assert!(
        eventually_status(keygate.auth, Some(KEY_A), 200, Duration::from_secs(5)),
        "no 200 within 5 s after the idle connections closed; log:\n{}",
        keygate.logs()
    );
    keygate.assert_serving();
}

#[test]
fn reset_connections_cause_no_panic_or_log_flood() {
    const RESETS: usize = 2000;
    let dir = TempDir::new("reset");
    let keys = dir.join("keys");
    write_keys(&keys, &[KEY_A, KEY_B]);
    let mut keygate = Keygate::start_with(
        &["--key-file", keys.to_str().unwrap()],
        &[("RUST_LOG", "info")],
    );
    keygate.assert_serving();
    let lines_before = keygate.logs().lines().count();

    for index in 0..RESETS {
        let mut stream = connect(keygate.auth);
        set_reset_on_close(&stream);
        // Half reset before sending anything, half in the middle of a head.
        if index % 2 == 1 {
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
        }
        drop(stream);
    }

    keygate.assert_serving();
    let logs = keygate.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(!logs.contains("internal error"), "{logs}");
    let new_lines = logs.lines().count() - lines_before;
    assert!(
        new_lines <= 10,
        "{new_lines} log lines for {RESETS} reset connections:\n{logs}"
    );
}

#[test]
fn ambiguous_framing_rejected() {
    let dir = TempDir::new("framing");
    let mut keygate = start(&dir, &[]);
    let key = format!("Authorization: Bearer {KEY_A}\r\n");
    let post = |headers: &str| format!("POST / HTTP/1.1\r\n{key}{headers}\r\n").into_bytes();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "CL then TE",
            post("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
        ),
        (
            "TE then CL",
            post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
        ),
        (
            "two CL values",
            post("Content-Length: 3\r\nContent-Length: 4\r\n"),
        ),
        ("CL 3x", post("Content-Length: 3x\r\n")),
        ("CL +3", post("Content-Length: +3\r\n")),
        ("CL -1", post("Content-Length: -1\r\n")),
        ("CL 3, 3", post("Content-Length: 3, 3\r\n")),
        ("CL 0x3", post("Content-Length: 0x3\r\n")),
        ("CL empty", post("Content-Length: \r\n")),
        (
            "CL beyond u64",
            post("Content-Length: 18446744073709551616\r\n"),
        ),
        ("space before colon", post("Content-Length : 3\r\n")),
        (
            "TE gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n"),
        ),
        (
            "TE chunked, gzip",
            post("Transfer-Encoding: chunked, gzip\r\n"),
        ),
        ("TE identity", post("Transfer-Encoding: identity\r\n")),
        ("TE xchunked", post("Transfer-Encoding: xchunked\r\n")),
        (
            "TE chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n"),
        ),
        (
            "two TE headers",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        ),
        (
            "TE in HTTP/1.0",
            format!("POST / HTTP/1.0\r\n{key}Transfer-Encoding: chunked\r\n\r\n").into_bytes(),
        ),
        (
            "folded Authorization (space)",
            format!("GET / HTTP/1.1\r\nX-A: a\r\n Authorization: Bearer {KEY_A}\r\n\r\n")
                .into_bytes(),
        ),
        (
            "folded Authorization (tab)",
            format!("GET / HTTP/1.1\r\nX-A: a\r\n\tAuthorization: Bearer {KEY_A}\r\n\r\n")
                .into_bytes(),
        ),
        (
            "bare LF in header value",
            format!("GET / HTTP/1.1\r\nX-A: a\nAuthorization: Bearer {KEY_A}\r\n\r\n").into_bytes(),
        ),
        (
            "bare CR in header value",
            format!("GET / HTTP/1.1\r\nX-A: a\rAuthorization: Bearer {KEY_A}\r\n\r\n").into_bytes(),
        ),
        (
            "NUL in header value",
            format!("GET / HTTP/1.1\r\n{key}X-A: a\0b\r\n\r\n").into_bytes(),
        ),
        (
            "space inside header name",
            format!("GET / HTTP/1.1\r\n{key}X A: b\r\n\r\n").into_bytes(),
        ),
        (
            "bare LF line endings",
            format!("GET / HTTP/1.1\n{}\n\n", key.trim_end()).into_bytes(),
        ),
    ];
    for control in [b'\0', 0x01, 0x1B, 0x7F, b'\r', b'\n'] {
        let mut raw = b"GET /a".to_vec();
        raw.push(control);
        raw.extend_from_slice(format!("b HTTP/1.1\r\n{key}\r\n").as_bytes());
        let status = assert_answered_then_closed(keygate.auth, &raw, "control byte in target");
        assert_eq!(
            status, 400,
            "control byte {control:#04x} in the request target"
        );
    }
    for (case, raw) in &cases {
        let status = assert_answered_then_closed(keygate.auth, raw, case);
        assert_ne!(status, 200, "{case}: a guessed framing was allowed");
        assert_eq!(status, 400, "{case}");
    }
    keygate.assert_serving();
    keygate.assert_no_key_in_logs();
}

#[test]
fn request_in_body_never_served() {
    let dir = TempDir::new("smuggle");
    let mut keygate = start(&dir, &[]);
    let smuggled = format!("GET / HTTP/1.1\r\nAuthorization: Bearer {KEY_A}\r\n\r\n");

    let chunked_head = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases = [
        (
            "request inside a chunk",
            format!(
                "{chunked_head}{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
        ),
        (
            "request after the last chunk",
            format!("{chunked_head}0\r\n\r\n{smuggled}"),
        ),
        (
            "request in a chunk extension",
            format!("{chunked_head}5;ext=\"\r\n{smuggled}\"\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "request after a bare LF in an extension",
            format!("{chunked_head}5;x\n{smuggled}hello\r\n0\r\n\r\n"),
        ),
        (
            "request inside a Content-Length body",
            format!(
                "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
    ];
    for (case, raw) in &cases {
        let status = assert_answered_then_closed(keygate.auth, raw.as_bytes(), case);
        assert_ne!(status, 200, "{case}: the body was served as a request");
        assert_eq!(status, 401, "{case}");
    }
    keygate.assert_serving();
    keygate.assert_no_key_in_logs();
}

#[test]
fn pipelined_requests_answered_in_order() {
    let dir = TempDir::new("pipeline-order");
    let mut keygate = start(&dir, &[]);
    let id_of = |key: &str| {
        let raw =
            format!("GET / HTTP/1.1\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n");
        let response = exchange(keygate.auth, raw.as_bytes()).expect("response");
        response.header("X-Keygate-Key-Id").unwrap().to_string()
    };
    let (id_a, id_b) = (id_of(KEY_A), id_of(KEY_B));

    let sequence = [
        Some(KEY_A),
        None,
        Some(KEY_B),
        Some(KEY_A),
        None,
        Some(KEY_B),
    ];
    let mut raw = String::new();
    for key in sequence {
        raw.push_str("GET / HTTP/1.1\r\n");
        if let Some(key) = key {
            raw.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        raw.push_str("\r\n");
    }
    let mut stream = connect(keygate.auth);
    stream.write_all(raw.as_bytes()).unwrap();
    for (index, key) in sequence.iter().enumerate() {
        let response =
            read_response(&mut stream, false).unwrap_or_else(|| panic!("no response {index}"));
        let expected_id = match *key {
            Some(KEY_A) => Some(id_a.as_str()),
            Some(_) => Some(id_b.as_str()),
            None => None,
        };
        let expected_status = if key.is_some() { 200 } else { 401 };
        assert_eq!(response.status, expected_status, "response {index}");
        assert_eq!(
            response.header("X-Keygate-Key-Id"),
            expected_id,
            "response {index}"
        );
    }
    keygate.assert_serving();
}

#[test]
fn unread_pipeline_holds_one_worker() {
    const REQUESTS: usize = 400_000;
    let dir = TempDir::new("pipeline-flood");
    let mut keygate = start(&dir, &["--max-connections", "4"]);
    keygate.assert_serving();
    let pid = keygate.pid();
    let rss_before = rss_kib(pid);

    let request = format!("GET / HTTP/1.1\r\nAuthorization: Bearer {KEY_A}\r\n\r\n");
    let pipeliner = connect(keygate.auth);
    pipeliner
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut writer = pipeliner.try_clone().unwrap();
    // The client never reads, so once the socket buffers fill keygate can
    // no longer write responses and must stop reading requests.
    let flood = thread::spawn(move || {
        let batch = request.repeat(100);
        let mut sent = 0;
        while sent < REQUESTS && writer.write_all(batch.as_bytes()).is_ok() {
            sent += 100;
        }
        sent
    });
    let sent = flood.join().unwrap();
    assert!(sent > 0, "no request could be sent");
    assert!(
        sent < REQUESTS,
        "keygate read all {REQUESTS} requests although the client never read a response"
    );

    // With a cap of 4, three clients served at the same time fit only if
    // the pipelining client occupies a single worker.
    let mut others: Vec<TcpStream> = (0..3).map(|_| connect(keygate.auth)).collect();
    for (index, stream) in others.iter_mut().enumerate() {
        stream
            .write_all(
                format!("GET / HTTP/1.1\r\nAuthorization: Bearer {KEY_A}\r\n\r\n").as_bytes(),
            )
            .unwrap();
        let response = read_response(stream, false)
            .unwrap_or_else(|| panic!("concurrent client {index}: no response"));
        assert_eq!(response.status, 200, "concurrent client {index}");
    }
    drop(others);
    for round in 0..20 {
        assert!(
            eventually_status(keygate.auth, Some(KEY_A), 200, PROMPT),
            "normal request {round} beside an unread pipeline"
        );
    }
    let growth = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        growth < MAX_RSS_GROWTH_KIB,
        "RSS grew by {growth} KiB after {sent} unread pipelined requests"
    );

    drop(pipeliner);
    keygate.assert_serving();
}

#[test]
fn non_ascii_header_value_still_decided() {
    let dir = TempDir::new("non-ascii");
    let mut keygate = start(&dir, &[]);
    for (case, value) in [
        ("UTF-8", "jörg".as_bytes().to_vec()),
        ("Latin-1", b"j\xF6rg".to_vec()),
    ] {
        for (key, expected) in [(Some(KEY_A), 200), (None, 401)] {
            let mut raw = b"GET / HTTP/1.1\r\nX-User: ".to_vec();
            raw.extend_from_slice(&value);
            raw.extend_from_slice(b"\r\n");
            if let Some(key) = key {
                raw.extend_from_slice(format!("Authorization: Bearer {key}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"Connection: close\r\n\r\n");
            let response =
                exchange(keygate.auth, &raw).unwrap_or_else(|| panic!("{case}: no status line"));
            assert_eq!(response.status, expected, "{case}, key: {}", key.is_some());
        }
    }
    keygate.assert_serving();
}

#[test]
fn declared_body_never_sent_decided_within_second() {
    let dir = TempDir::new("no-body");
    let mut keygate = start(&dir, &[]);
    let key = format!("Authorization: Bearer {KEY_A}\r\n");
    let cases = [
        (
            "Content-Length with key",
            format!("POST / HTTP/1.1\r\nContent-Length: 5000\r\n{key}\r\n"),
            200,
        ),
        (
            "Content-Length without key",
            "POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".to_string(),
            401,
        ),
        (
            "chunked with key",
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n{key}\r\n"),
            200,
        ),
    ];
    for (case, raw, expected) in &cases {
        let mut stream = connect(keygate.auth);
        let started = Instant::now();
        stream.write_all(raw.as_bytes()).unwrap();
        let response =
            read_response(&mut stream, false).unwrap_or_else(|| panic!("{case}: no response"));
        let elapsed = started.elapsed();
        assert_eq!(response.status, *expected, "{case}");
        assert!(
            elapsed < Duration::from_secs(1),
            "{case}: decision took {elapsed:?}"
        );
    }
    keygate.assert_serving();
}

#[test]
fn idle_keep_alive_closed_at_idle_timeout() {
    let dir = TempDir::new("idle");
    let mut keygate = start(&dir, &["--idle-timeout", "1s"]);
    let request = format!("GET / HTTP/1.1\r\nAuthorization: Bearer {KEY_A}\r\n\r\n");

    // Requests spaced under the timeout keep the connection open.
    let mut stream = connect(keygate.auth);
    for _ in 0..3 {
        stream.write_all(request.as_bytes()).unwrap();
        assert_eq!(
            read_response(&mut stream, false).map(|r| r.status),
            Some(200)
        );
        thread::sleep(Duration::from_millis(500));
    }

    // Past the timeout the connection closes without a response.
    let started = Instant::now();
    let rest = read_until_close(&mut stream).expect("closed at the idle timeout");
    assert!(rest.is_empty(), "sent {:?}", String::from_utf8_lossy(&rest));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    keygate.assert_serving();
}

#[test]
fn max_header_bytes_flag_applied() {
    let dir = TempDir::new("header-bytes");
    let mut keygate = start(&dir, &["--max-header-bytes", "2048"]);
    let head = |filler: usize| {
        format!(
            "GET / HTTP/1.1\r\nAuthorization: Bearer {KEY_A}\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(filler)
        )
    };

    let small = exchange(keygate.auth, head(1500).as_bytes()).expect("response");
    assert_eq!(small.status, 200);
    let status =
        assert_answered_then_closed(keygate.auth, head(2500).as_bytes(), "over 2048 bytes");
    assert_eq!(status, 431);
    keygate.assert_serving();
}
