//! Key-file parser: no panic on any input, one outcome per line, and every
//! accepted key within the length limits.

#![no_main]

use keygate::keys::{self, LineOutcome};
use libfuzzer_sys::fuzz_target;

/// Minimum key length, the default of `--min-key-length`.
const MIN_KEY_LENGTH: usize = 16;

fuzz_target!(|data: &[u8]| {
    let parsed = keys::parse_key_file(data, MIN_KEY_LENGTH);
    let new_keys = parsed
        .lines
        .iter()
        .filter(|outcome| matches!(outcome, LineOutcome::Key(_)))
        .count();
    assert_eq!(new_keys, parsed.keys.len());
    assert!(parsed.lines.len() <= data.iter().filter(|&&b| b == b'\n').count() + 1);
    for (key, id) in &parsed.keys {
        assert!((MIN_KEY_LENGTH..=keys::MAX_KEY_LENGTH).contains(&key.len()));
        assert_eq!(*id, key.id());
    }
});
