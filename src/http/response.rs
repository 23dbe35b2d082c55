//! Response heads and the small fixed-body responses keygate sends itself.

use std::io::{self, Write};

use super::conn::Conn;

/// Returns the reason phrase for the statuses keygate sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Response under construction: status line and headers, then an optional body.
pub struct Response {
    bytes: Vec<u8>,
    body: Vec<u8>,
    close: bool,
    /// Whether the body is left out, as for a HEAD request. The headers still
    /// describe the body that GET would have returned.
    omit_body: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(b"HTTP/1.1 ");
        bytes.extend_from_slice(status.to_string().as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(reason_phrase(status).as_bytes());
        bytes.extend_from_slice(b"\r\n");
        Response {
            bytes,
            body: Vec::new(),
            close: false,
            omit_body: false,
        }
    }

    /// Adds a header field. The caller guarantees that neither part contains CR or LF.
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(b": ");
        self.bytes.extend_from_slice(value.as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        self
    }

    /// Sets a JSON body of the form `{"error":CODE,"message":MESSAGE}`.
    pub fn json_error(self, code: &str, message: &str) -> Response {
        let body = format!(
            "{{\"error\":\"{}\",\"message\":\"{}\"}}\n",
            json_escape(code),
            json_escape(message)
        );
        self.body("application/json", body.into_bytes())
    }

    pub fn body(mut self, content_type: &str, body: Vec<u8>) -> Response {
        self = self.header("Content-Type", content_type);
        self.body = body;
        self
    }

    /// Marks the connection to close after this response.
    pub fn close(mut self, close: bool) -> Response {
        self.close = close;
        self
    }

    pub fn omit_body(mut self, omit: bool) -> Response {
        self.omit_body = omit;
        self
    }

    /// Serialises the response into one buffer, so it goes out in one write.
    pub fn into_bytes(mut self, keep_alive_http10: bool) -> Vec<u8> {
        self.bytes.extend_from_slice(b"Content-Length: ");
        self.bytes
            .extend_from_slice(self.body.len().to_string().as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        if self.close {
            self.bytes.extend_from_slice(b"Connection: close\r\n");
        } else if keep_alive_http10 {
            self.bytes.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        self.bytes.extend_from_slice(b"\r\n");
        if !self.omit_body {
            self.bytes.extend_from_slice(&self.body);
        }
        self.bytes
    }

    pub fn send(self, conn: &mut Conn, keep_alive_http10: bool) -> io::Result<()> {
        conn.write_all(&self.into_bytes(keep_alive_http10))
    }
}

/// Escapes a string for a JSON string literal.
pub fn json_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            control if (control as u32) < 0x20 => {
                escaped.push_str(&format!("\\u{:04x}", control as u32))
            }
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_serialises_head_and_body() {
        let bytes = Response::new(401)
            .header("WWW-Authenticate", "Bearer realm=\"keygate\"")
            .json_error("unauthorized", "say \"hi\"")
            .close(true)
            .into_bytes(false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(
            text.ends_with("{\"error\":\"unauthorized\",\"message\":\"say \\\"hi\\\"\"}\n"),
            "{text}"
        );
    }

    #[test]
    fn head_response_keeps_length_without_body() {
        let bytes = Response::new(200)
            .body("text/plain", b"ok\n".to_vec())
            .omit_body(true)
            .into_bytes(true);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Content-Length: 3\r\n"), "{text}");
        assert!(text.contains("Connection: keep-alive\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
