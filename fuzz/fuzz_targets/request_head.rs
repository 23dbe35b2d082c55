//! Request-head parser with keygate's framing rules: no panic on any input,
//! and every accepted head is self-consistent.

#![no_main]

use keygate::http::request::{self, Framing, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = request::parse(data, 100) else {
        return;
    };
    assert!(head.length <= data.len());
    let bytes = &data[..head.length];
    assert!(bytes.ends_with(b"\r\n\r\n"));

    // Every line ends in CRLF, so a parser that splits on bare LF finds the
    // same header lines.
    for (index, &byte) in bytes.iter().enumerate() {
        if byte == b'\n' {
            assert_eq!(bytes[index - 1], b'\r', "bare LF in an accepted head");
        }
    }
    for span in [&head.method, &head.target]
        .into_iter()
        .chain(head.headers.iter().flat_map(|(name, value)| [name, value]))
    {
        assert!(span.end <= head.length);
    }
    if head.framing == Framing::Chunked {
        assert_eq!(head.version, Version::Http11);
    }

    // The head alone parses to the same head: nothing after it changed it.
    let again = request::parse(bytes, 100)
        .expect("the accepted head alone is valid")
        .expect("the accepted head alone is complete");
    assert_eq!(again.length, head.length);
    assert_eq!(again.framing, head.framing);
});
