//! API keys: the key-file format, non-secret key ids, and the live key set.
//!
//! A key file has one key per line. Parsing is shared by the daemon and by
//! `keygate keys check`, so both accept and reject exactly the same lines.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

/// Maximum length of one key in bytes.
pub const MAX_KEY_LENGTH: usize = 4096;

/// Length below which a key is accepted but a warning recommends a longer one.
pub const RECOMMENDED_KEY_LENGTH: usize = 32;

/// Secret key material.
///
/// Equality runs in constant time with respect to the content (only the length
/// can leak), and `Debug` never prints the bytes, so a key cannot reach a log
/// through `{:?}`.
#[derive(Clone)]
pub struct SecretKey(Box<[u8]>);

impl SecretKey {
    pub fn new(bytes: &[u8]) -> SecretKey {
        SecretKey(bytes.into())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Computes the non-secret id that logs, metrics and headers show.
    pub fn id(&self) -> KeyId {
        KeyId::of(&self.0)
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &SecretKey) -> bool {
        constant_time_eq::constant_time_eq(&self.0, &other.0)
    }
}

impl Eq for SecretKey {}

impl Hash for SecretKey {
    // The map uses std's randomly keyed SipHash, so the bucket a token lands
    // in reveals nothing about which keys exist.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(<{} bytes redacted>)", self.0.len())
    }
}

/// Length of a key id in bytes: `sha256:` and 16 hex digits.
const KEY_ID_LENGTH: usize = 7 + 16;

/// Non-secret key id: `sha256:` and the first 16 hex digits of the key's SHA-256.
///
/// Stored inline, so a set of 100,000 keys needs no allocation per id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LENGTH]);

impl KeyId {
    /// Computes the id of raw key bytes.
    pub fn of(key: &[u8]) -> KeyId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(key);
        let mut id = [0u8; KEY_ID_LENGTH];
        id[..7].copy_from_slice(b"sha256:");
        for (index, byte) in digest[..8].iter().enumerate() {
            id[7 + 2 * index] = HEX[usize::from(byte >> 4)];
            id[8 + 2 * index] = HEX[usize::from(byte & 0x0f)];
        }
        KeyId(id)
    }

    pub fn as_str(&self) -> &str {
        // The bytes are ASCII by construction in `KeyId::of`.
        std::str::from_utf8(&self.0).unwrap_or("sha256:invalid")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

/// Reason a key-file line is not used as a key. The reason never contains
/// the line's content, so it is safe to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// A byte outside visible ASCII (0x21 to 0x7E) at this 1-based column.
    InvalidCharacter { column: usize },
    /// Fewer bytes than the minimum key length.
    TooShort { length: usize, minimum: usize },
    /// More bytes than [`MAX_KEY_LENGTH`].
    TooLong { length: usize },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::InvalidCharacter { column } => write!(
                f,
                "invalid character at column {column} (keys are visible ASCII, 0x21 to 0x7E, with no spaces inside)"
            ),
            SkipReason::TooShort { length, minimum } => write!(
                f,
                "key too short ({length} bytes, minimum {minimum}; see --min-key-length)"
            ),
            SkipReason::TooLong { length } => {
                write!(f, "key too long ({length} bytes, maximum {MAX_KEY_LENGTH})")
            }
        }
    }
}

/// Outcome of one line of a key file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineOutcome {
    /// An empty line, or one with only spaces and tabs.
    Blank,
    /// A line whose first non-blank character is `#`.
    Comment,
    /// A key used for the first time in the file.
    Key(KeyId),
    /// A key already seen on an earlier line. It counts once.
    Duplicate(KeyId),
    /// A line that is not a valid key.
    Skipped(SkipReason),
}

/// Key file parsed with the daemon's rules.
#[derive(Debug)]
pub struct ParsedKeyFile {
    /// Distinct valid keys in file order, with their ids.
    pub keys: Vec<(SecretKey, KeyId)>,
    /// Outcome of each line, 1-based line `n` at index `n - 1`.
    pub lines: Vec<LineOutcome>,
}

impl ParsedKeyFile {
    /// Iterates over `(line number, reason)` for each skipped line.
    pub fn skipped(&self) -> impl Iterator<Item = (usize, &SkipReason)> {
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(index, outcome)| match outcome {
                LineOutcome::Skipped(reason) => Some((index + 1, reason)),
                _ => None,
            })
    }
}

/// Parses key-file bytes.
///
/// One leading UTF-8 BOM is removed. Lines split on `\n`, and spaces, tabs
/// and a trailing `\r` are trimmed from both ends. Blank lines and lines
/// starting with `#` are ignored. A key is visible ASCII, between
/// `min_key_length` and [`MAX_KEY_LENGTH`] bytes. A last line without a
/// newline counts like any other.
pub fn parse_key_file(bytes: &[u8], min_key_length: usize) -> ParsedKeyFile {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut keys = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut lines = Vec::new();

    let mut line_bytes: Vec<&[u8]> = bytes.split(|&byte| byte == b'\n').collect();
    // A final newline ends the last line rather than starting an empty one.
    if line_bytes.len() > 1 && line_bytes.last().is_some_and(|line| line.is_empty()) {
        line_bytes.pop();
    }

    for raw in line_bytes {
        let line = trim_line(raw);
        let outcome = if line.is_empty() {
            LineOutcome::Blank
        } else if line[0] == b'#' {
            LineOutcome::Comment
        } else {
            match validate_key(line, min_key_length) {
                Err(reason) => LineOutcome::Skipped(reason),
                Ok(()) => {
                    let key = SecretKey::new(line);
                    let id = key.id();
                    if seen.insert(key.clone()) {
                        keys.push((key, id));
                        LineOutcome::Key(id)
                    } else {
                        LineOutcome::Duplicate(id)
                    }
                }
            }
        };
        lines.push(outcome);
    }

    ParsedKeyFile { keys, lines }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let is_blank = |byte: &u8| matches!(byte, b' ' | b'\t' | b'\r');
    let start = line.iter().position(|b| !is_blank(b)).unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !is_blank(b))
        .map_or(start, |i| i + 1);
    &line[start..end]
}

fn validate_key(line: &[u8], min_key_length: usize) -> Result<(), SkipReason> {
    if let Some(index) = line.iter().position(|&b| !(0x21..=0x7E).contains(&b)) {
        return Err(SkipReason::InvalidCharacter { column: index + 1 });
    }
    if line.len() < min_key_length {
        return Err(SkipReason::TooShort {
            length: line.len(),
            minimum: min_key_length,
        });
    }
    if line.len() > MAX_KEY_LENGTH {
        return Err(SkipReason::TooLong { length: line.len() });
    }
    Ok(())
}

/// Usage counters of one key, kept across reloads for as long as the key stays.
#[derive(Debug, Default)]
pub struct KeyUsage {
    /// Requests allowed with this key.
    pub allowed: AtomicU64,
    /// Unix time in seconds of the last allowed request, 0 if none.
    pub last_used_unix: AtomicU64,
}

/// One key of the live set.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: KeyId,
    pub usage: Arc<KeyUsage>,
}

/// Immutable set of keys, replaced whole on reload.
#[derive(Debug, Default)]
pub struct KeySet {
    entries: HashMap<SecretKey, Arc<KeyEntry>>,
}

impl KeySet {
    /// Builds a set from parsed keys and their ids, carrying over the usage
    /// counters of keys that `previous` already has.
    pub fn build(keys: Vec<(SecretKey, KeyId)>, previous: &KeySet) -> KeySet {
        let previous_usage: HashMap<&KeyId, &Arc<KeyUsage>> = previous
            .entries
            .values()
            .map(|entry| (&entry.id, &entry.usage))
            .collect();

        let mut entries = HashMap::with_capacity(keys.len());
        for (key, id) in keys {
            let usage = previous_usage
                .get(&id)
                .map(|usage| Arc::clone(usage))
                .unwrap_or_default();
            entries.insert(key, Arc::new(KeyEntry { id, usage }));
        }
        KeySet { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Finds the entry whose key equals `token`, comparing key content in constant time.
    pub fn find(&self, token: &[u8]) -> Option<&Arc<KeyEntry>> {
        if token.len() > MAX_KEY_LENGTH {
            return None;
        }
        self.entries.get(&SecretKey::new(token))
    }

    /// Iterates over the entries in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.entries.values()
    }

    /// Returns the sorted ids of this set.
    pub fn ids(&self) -> Vec<KeyId> {
        let mut ids: Vec<KeyId> = self.entries.values().map(|entry| entry.id).collect();
        ids.sort_unstable();
        ids
    }
}

/// Live key set shared by the request threads and the reloader.
#[derive(Debug, Default)]
pub struct KeyStore {
    current: RwLock<Arc<KeySet>>,
}

impl KeyStore {
    pub fn new(set: KeySet) -> KeyStore {
        KeyStore {
            current: RwLock::new(Arc::new(set)),
        }
    }

    /// Returns the set in force now. A reload swaps in a new set and leaves
    /// this one untouched, so holding it does not block the reload.
    pub fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    /// Looks `token` up in the set in force now.
    pub fn find(&self, token: &[u8]) -> Option<Arc<KeyEntry>> {
        let set = self
            .current
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        set.find(token).cloned()
    }

    pub fn len(&self) -> usize {
        self.current
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }

    /// Replaces the set and returns the previous one.
    ///
    /// The write lock is held only for the pointer swap. The caller drops the
    /// returned set, which for a large set takes a while, outside the lock.
    pub fn replace(&self, set: KeySet) -> Arc<KeySet> {
        let set = Arc::new(set);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        std::mem::replace(&mut *current, set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn outcomes(text: &[u8]) -> Vec<LineOutcome> {
        parse_key_file(text, 16).lines
    }

    #[test]
    fn parse_strips_bom_and_trims() {
        let parsed = parse_key_file(b"\xEF\xBB\xBF  aaaaaaaaaaaaaaaa\t\r\n", 16);
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.keys[0].0, SecretKey::new(b"aaaaaaaaaaaaaaaa"));
        assert_eq!(parsed.keys[0].1, KeyId::of(b"aaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn parse_reads_last_line_without_newline() {
        let parsed = parse_key_file(b"# comment\naaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbb", 16);
        assert_eq!(parsed.keys.len(), 2);
        assert_eq!(parsed.lines.len(), 3);
    }

    #[test]
    fn parse_skips_invalid_lines_with_reasons() {
        let lines =
            outcomes(b"short\nwith space inside key\ncaf\xC3\xA9aaaaaaaaaaaaaaaa\n\n  # note\n");
        assert_eq!(
            lines[0],
            LineOutcome::Skipped(SkipReason::TooShort {
                length: 5,
                minimum: 16
            })
        );
        assert_eq!(
            lines[1],
            LineOutcome::Skipped(SkipReason::InvalidCharacter { column: 5 })
        );
        assert_eq!(
            lines[2],
            LineOutcome::Skipped(SkipReason::InvalidCharacter { column: 4 })
        );
        assert_eq!(lines[3], LineOutcome::Blank);
        assert_eq!(lines[4], LineOutcome::Comment);
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn parse_rejects_overlong_key() {
        let long = vec![b'k'; MAX_KEY_LENGTH + 1];
        let lines = outcomes(&long);
        assert_eq!(
            lines[0],
            LineOutcome::Skipped(SkipReason::TooLong {
                length: MAX_KEY_LENGTH + 1
            })
        );
        let exact = vec![b'k'; MAX_KEY_LENGTH];
        assert_eq!(parse_key_file(&exact, 16).keys.len(), 1);
    }

    #[test]
    fn parse_counts_duplicates_once() {
        let parsed = parse_key_file(b"aaaaaaaaaaaaaaaa\naaaaaaaaaaaaaaaa\n", 16);
        assert_eq!(parsed.keys.len(), 1);
        assert!(matches!(parsed.lines[1], LineOutcome::Duplicate(_)));
    }

    #[test]
    fn parse_keeps_opaque_characters() {
        let parsed = parse_key_file(b"abc=def:ghi+jkl/mno==\n", 16);
        assert_eq!(parsed.keys[0].0, SecretKey::new(b"abc=def:ghi+jkl/mno=="));
    }

    #[test]
    fn key_id_format() {
        // SHA-256("test") starts with 9f86d081884c7d65.
        assert_eq!(KeyId::of(b"test").as_str(), "sha256:9f86d081884c7d65");
    }

    #[test]
    fn secret_key_debug_redacts() {
        let text = format!("{:?}", SecretKey::new(b"supersecretvalue1234"));
        assert!(!text.contains("supersecret"), "{text}");
    }

    #[test]
    fn key_set_find_and_usage_carry_over() {
        let first = KeySet::build(
            parse_key_file(b"aaaaaaaaaaaaaaaa", 16).keys,
            &KeySet::default(),
        );
        let entry = first.find(b"aaaaaaaaaaaaaaaa").expect("key present");
        entry.usage.allowed.fetch_add(3, Ordering::Relaxed);
        assert!(first.find(b"aaaaaaaaaaaaaaab").is_none());

        let second = KeySet::build(
            parse_key_file(b"aaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbb\n", 16).keys,
            &first,
        );
        let carried = second.find(b"aaaaaaaaaaaaaaaa").expect("key still present");
        assert_eq!(carried.usage.allowed.load(Ordering::Relaxed), 3);
        assert_eq!(second.len(), 2);
    }
}
