//! Header rewriting in both directions: hop-by-hop removal, credentials,
//! the key-id header, `X-Forwarded-*`, and the framing keygate sets itself.

use std::net::IpAddr;

use crate::http::Request;
use crate::http::request::Framing;
use crate::upstream::ResponseHead;

/// Hop-by-hop fields (RFC 9110 section 7.6.1, plus the legacy
/// `Proxy-Connection`), never forwarded in either direction. Fields named
/// in `Connection` are hop-by-hop too.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
];

/// Request fields that keygate removes and, where needed, writes afresh.
const REPLACED_REQUEST_FIELDS: [&str; 4] = [
    "content-length",
    // keygate sends `100 Continue` itself once the request is allowed.
    "expect",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Values keygate adds to a forwarded request.
pub struct Forwarding<'a> {
    /// Address of the client connection.
    pub client: IpAddr,
    /// Header that carries the key id, and the id of the matching key.
    pub key_id_header: &'a str,
    pub key_id: &'a str,
    /// Whether `Authorization` is forwarded.
    pub pass_authorization: bool,
    /// `Host` to send when the client sent none (HTTP/1.0).
    pub fallback_host: &'a str,
}

/// Names listed in the `Connection` fields, which mark more hop-by-hop fields.
fn connection_options<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    values
        .flat_map(|value| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|option| !option.is_empty())
        .collect()
}

fn is_listed(name: &[u8], list: &[&str]) -> bool {
    list.iter()
        .any(|listed| name.eq_ignore_ascii_case(listed.as_bytes()))
}

fn is_hop_by_hop(name: &[u8], connection_options: &[&[u8]]) -> bool {
    is_listed(name, &HOP_BY_HOP)
        || connection_options
            .iter()
            .any(|option| name.eq_ignore_ascii_case(option))
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Builds the HTTP/1.1 request head sent upstream.
///
/// Method and target are copied byte for byte. The body framing follows
/// `request.head.framing`, because keygate re-frames the body it forwards.
pub fn upstream_request_head(request: &Request<'_>, forwarding: &Forwarding<'_>) -> Vec<u8> {
    let options = connection_options(request.header_values("connection"));
    let mut out = Vec::with_capacity(request.bytes.len() + 256);
    out.extend_from_slice(request.method());
    out.push(b' ');
    out.extend_from_slice(request.target());
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let mut forwarded_for = Vec::new();
    let mut host = None;
    for (name, value) in request.headers() {
        if is_hop_by_hop(name, &options)
            || is_listed(name, &REPLACED_REQUEST_FIELDS)
            || name.eq_ignore_ascii_case(forwarding.key_id_header.as_bytes())
            || (name.eq_ignore_ascii_case(b"authorization") && !forwarding.pass_authorization)
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            if !forwarded_for.is_empty() {
                forwarded_for.extend_from_slice(b", ");
            }
            forwarded_for.extend_from_slice(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") && host.is_none() {
            host = Some(value);
        }
        push_field(&mut out, name, value);
    }

    if host.is_none() {
        push_field(&mut out, b"Host", forwarding.fallback_host.as_bytes());
    }
    if !forwarded_for.is_empty() {
        forwarded_for.extend_from_slice(b", ");
    }
    forwarded_for.extend_from_slice(forwarding.client.to_string().as_bytes());
    push_field(&mut out, b"X-Forwarded-For", &forwarded_for);
    push_field(&mut out, b"X-Forwarded-Proto", b"http");
    if let Some(host) = host {
        push_field(&mut out, b"X-Forwarded-Host", host);
    }
    push_field(
        &mut out,
        forwarding.key_id_header.as_bytes(),
        forwarding.key_id.as_bytes(),
    );

    match request.head.framing {
        Framing::None => {}
        Framing::Length(length) => {
            push_field(&mut out, b"Content-Length", length.to_string().as_bytes())
        }
        Framing::Chunked => push_field(&mut out, b"Transfer-Encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Framing of the response body towards the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body. The upstream's `Content-Length`, which describes the body a
    /// GET would get, is relayed for HEAD and 304.
    None,
    Length(u64),
    Chunked,
    /// The body ends when keygate closes the connection (HTTP/1.0 clients).
    UntilClose,
}

/// Framing and connection options of the response head relayed to the client.
pub struct ClientHeadOptions {
    pub framing: ClientFraming,
    /// Whether keygate closes the client connection after this response.
    pub close: bool,
    /// Whether the client is HTTP/1.0 and keeps the connection, which needs
    /// `Connection: keep-alive`.
    pub keep_alive_http10: bool,
}

/// Builds the response head sent to the client from the upstream's head.
pub fn client_response_head(response: &ResponseHead, options: &ClientHeadOptions) -> Vec<u8> {
    let connection = connection_options(response.header_values("connection"));
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {} ", response.status).as_bytes());
    out.extend_from_slice(response.reason.as_bytes());
    out.extend_from_slice(b"\r\n");

    let keep_length = options.framing == ClientFraming::None && response.status != 204;
    for (name, value) in &response.headers {
        let name = name.as_bytes();
        if is_hop_by_hop(name, &connection)
            || (name.eq_ignore_ascii_case(b"content-length") && !keep_length)
        {
            continue;
        }
        push_field(&mut out, name, value);
    }

    match options.framing {
        ClientFraming::None | ClientFraming::UntilClose => {}
        ClientFraming::Length(length) => {
            push_field(&mut out, b"Content-Length", length.to_string().as_bytes())
        }
        ClientFraming::Chunked => push_field(&mut out, b"Transfer-Encoding", b"chunked"),
    }
    if options.close {
        push_field(&mut out, b"Connection", b"close");
    } else if options.keep_alive_http10 {
        push_field(&mut out, b"Connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request;

    fn forwarded(raw: &[u8], pass_authorization: bool) -> String {
        let head = request::parse(raw, 100).unwrap().unwrap();
        let request = Request {
            head: &head,
            bytes: raw,
        };
        let forwarding = Forwarding {
            client: "10.1.2.3".parse().unwrap(),
            key_id_header: "X-Keygate-Key-Id",
            key_id: "sha256:0123456789abcdef",
            pass_authorization,
            fallback_host: "app:8080",
        };
        String::from_utf8(upstream_request_head(&request, &forwarding)).unwrap()
    }

    #[test]
    fn request_head_drops_hop_by_hop_and_credentials() {
        let text = forwarded(
            b"POST /a%2Fb?q=1 HTTP/1.1\r\nHost: api.example\r\nConnection: keep-alive, X-Hop\r\n\
X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eA==\r\n\
Authorization: Bearer secret\r\nx-keygate-key-id: forged\r\nExpect: 100-continue\r\n\
X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Host: evil\r\nX-End: kept\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert!(text.starts_with("POST /a%2Fb?q=1 HTTP/1.1\r\n"), "{text}");
        for removed in [
            "Connection",
            "X-Hop",
            "Keep-Alive",
            "TE:",
            "Upgrade",
            "Proxy-Authorization",
            "Authorization: Bearer",
            "forged",
            "Expect",
            "evil",
        ] {
            assert!(!text.contains(removed), "{removed} in {text}");
        }
        assert!(text.contains("X-End: kept\r\n"), "{text}");
        assert!(
            text.contains("X-Forwarded-For: 192.0.2.1, 10.1.2.3\r\n"),
            "{text}"
        );
        assert!(text.contains("X-Forwarded-Host: api.example\r\n"), "{text}");
        assert!(
            text.contains("X-Keygate-Key-Id: sha256:0123456789abcdef\r\n"),
            "{text}"
        );
        assert!(text.ends_with("Content-Length: 3\r\n\r\n"), "{text}");
    }

    #[test]
    fn request_head_keeps_authorization_when_asked() {
        let text = forwarded(
            b"GET / HTTP/1.0\r\nAuthorization: Bearer secret\r\n\r\n",
            true,
        );
        assert!(text.contains("Authorization: Bearer secret\r\n"), "{text}");
        assert!(text.contains("Host: app:8080\r\n"), "{text}");
        assert!(!text.contains("X-Forwarded-Host"), "{text}");
    }
}
