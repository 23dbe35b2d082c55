//! Chunked body decoder: no panic on any input, never more body bytes than
//! input bytes, and the same result however the input is split into reads.
//! The first input byte sets the reader's buffer capacity (1 to 16 bytes),
//! so chunk lines and data cross buffer boundaries.

#![no_main]

use std::io::{BufReader, Read};

use keygate::http::body::BodyReader;
use keygate::http::request::Framing;
use libfuzzer_sys::fuzz_target;

fn decode(reader: impl std::io::BufRead) -> Result<Vec<u8>, std::io::ErrorKind> {
    let mut body = BodyReader::new(reader, Framing::Chunked);
    let mut out = Vec::new();
    body.read_to_end(&mut out).map_err(|error| error.kind())?;
    assert!(body.is_done());
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&capacity, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input);
    let split = decode(BufReader::with_capacity(
        usize::from(capacity % 16) + 1,
        input,
    ));
    if let Ok(body) = &whole {
        assert!(body.len() <= input.len());
    }
    assert_eq!(whole.is_ok(), split.is_ok(), "result depends on read sizes");
    if let (Ok(whole), Ok(split)) = (&whole, &split) {
        assert_eq!(whole, split, "body depends on read sizes");
    }
});
