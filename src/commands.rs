//! Subcommands that run and exit: `keys check`, `keys id` and `healthcheck`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::config::{Healthcheck, KeysCheck};
use crate::keyfile;
use crate::keys::{self, KeyId, LineOutcome};
use crate::text;

/// Prints each line's outcome. Returns whether the daemon would accept the
/// file at start-up: it is readable and has at least one valid key.
pub fn keys_check(check: &KeysCheck, out: &mut dyn Write) -> Result<bool, String> {
    let snapshot = keyfile::read(&check.key_file, check.max_key_file_bytes)
        .map_err(|error| error.to_string())?;
    let parsed = keys::parse_key_file(&snapshot.bytes, check.min_key_length);

    for (index, outcome) in parsed.lines.iter().enumerate() {
        let line = index + 1;
        let text = match outcome {
            LineOutcome::Blank => continue,
            LineOutcome::Comment => continue,
            LineOutcome::Key(id) => format!("line {line}: {id}"),
            LineOutcome::Duplicate(id) => {
                format!("line {line}: {id} (duplicate of an earlier line, counted once)")
            }
            LineOutcome::Skipped(reason) => format!("line {line}: skipped: {reason}"),
        };
        writeln!(out, "{text}").map_err(|error| error.to_string())?;
    }

    let accepted = !parsed.keys.is_empty();
    let summary = if accepted {
        format!(
            "{}: {}, {} skipped",
            check.key_file.display(),
            text::count(parsed.keys.len(), "valid key", "valid keys"),
            text::count(parsed.skipped().count(), "line", "lines")
        )
    } else {
        format!(
            "{}: no valid keys; keygate would refuse to start with this file",
            check.key_file.display()
        )
    };
    writeln!(out, "{summary}").map_err(|error| error.to_string())?;
    Ok(accepted)
}

/// Reads one key from `input` and returns its id and its length in bytes.
///
/// Surrounding spaces and one trailing newline are ignored, as in a key file.
pub fn keys_id(input: &mut dyn Read) -> Result<(KeyId, usize), String> {
    let mut bytes = Vec::new();
    input
        .take(keys::MAX_KEY_LENGTH as u64 * 2)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read the key from standard input: {error}"))?;
    let parsed = keys::parse_key_file(&bytes, 1);
    let [(key, id)] = parsed.keys.as_slice() else {
        return Err(format!(
            "expected exactly one key on standard input, found {}; try: printf %s \"$KEY\" | keygate keys id",
            parsed.keys.len()
        ));
    };
    if let Some((_, reason)) = parsed.skipped().next() {
        return Err(format!("the input is not a valid key: {reason}"));
    }
    Ok((*id, key.len()))
}

/// Requests the health URL and succeeds only on a 200 within the timeout.
pub fn healthcheck(check: &Healthcheck) -> Result<(), String> {
    let deadline = Instant::now() + check.timeout;
    let (authority, path) = split_http_url(&check.url)?;
    let address = authority
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {authority}: {error}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolved to no address"))?;

    let status = request_status(address, authority, path, deadline).map_err(|error| {
        if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            format!(
                "health check of {} timed out after {:?}; the daemon accepted no request or sent no status line",
                check.url, check.timeout
            )
        } else {
            format!("health check of {} failed: {error}", check.url)
        }
    })?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!(
            "health check of {} returned status {status}",
            check.url
        ))
    }
}

fn split_http_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("invalid health-check URL {url:?}: expected http://HOST:PORT/PATH")
    })?;
    Ok(match rest.find('/') {
        Some(index) => (&rest[..index], &rest[index..]),
        None => (rest, "/"),
    })
}

fn request_status(
    address: SocketAddr,
    authority: &str,
    path: &str,
    deadline: Instant,
) -> io::Result<u16> {
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    };
    let mut stream = TcpStream::connect_timeout(&address, left()?)?;
    stream.set_write_timeout(Some(left()?))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;

    let mut response = Vec::new();
    let mut chunk = [0u8; 512];
    // The status line is all that is needed. A stopped daemon whose kernel
    // accepted the connection never responds, so the read times out.
    while !response.windows(2).any(|pair| pair == b"\r\n") && response.len() < 4096 {
        stream.set_read_timeout(Some(left()?.max(Duration::from_millis(1))))?;
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
    }
    let line = response.split(|&b| b == b'\r').next().unwrap_or_default();
    let status = line
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok());
    status.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no HTTP status line in the answer",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_id_reads_one_key() {
        let (id, length) = keys_id(&mut &b"supersecretkey-123\n"[..]).unwrap();
        assert_eq!(id, KeyId::of(b"supersecretkey-123"));
        assert_eq!(length, 18);
        assert!(keys_id(&mut &b""[..]).is_err());
        assert!(keys_id(&mut &b"a\nb\n"[..]).is_err());
    }

    #[test]
    fn url_split() {
        assert_eq!(
            split_http_url("http://127.0.0.1:8081/healthz").unwrap(),
            ("127.0.0.1:8081", "/healthz")
        );
        assert_eq!(split_http_url("http://h:1").unwrap(), ("h:1", "/"));
        assert!(split_http_url("https://h/").is_err());
    }
}
