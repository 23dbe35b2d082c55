//! Reading the key file from disk with size and file-type limits.
//!
//! Every read opens the path afresh, so symlinks (a Kubernetes Secret
//! volume's `..data`) are followed as they are at that moment.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Contents of the key file as read at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub bytes: Vec<u8>,
    /// Hard-link count of the file read. Zero means the file was deleted
    /// while something (a bind mount) kept it reachable at this path.
    pub link_count: u64,
    /// File mode bits, for the permission warning.
    pub mode: u32,
}

/// Failure to read the key file.
#[derive(Debug)]
pub enum ReadError {
    /// Opening, inspecting or reading failed with an OS error.
    Io { path: PathBuf, error: io::Error },
    /// The path is not a regular file.
    NotRegularFile { path: PathBuf, kind: &'static str },
    /// The file is larger than the configured maximum.
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
}

impl ReadError {
    /// Tells whether `other` has the same cause, so that a poller logs a
    /// failure once and not on every poll.
    pub fn same_failure_as(&self, other: &ReadError) -> bool {
        match (self, other) {
            (ReadError::Io { error: a, .. }, ReadError::Io { error: b, .. }) => {
                a.kind() == b.kind()
            }
            (
                ReadError::NotRegularFile { kind: a, .. },
                ReadError::NotRegularFile { kind: b, .. },
            ) => a == b,
            (ReadError::TooLarge { .. }, ReadError::TooLarge { .. }) => true,
            _ => false,
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io { path, error } => {
                write!(
                    f,
                    "cannot read key file {}: {error}; check the path given in --key-file, KEYGATE_KEY_FILE or AUTH_SECRET_PATH and its permissions",
                    path.display()
                )
            }
            ReadError::NotRegularFile { path, kind } => write!(
                f,
                "key file {} is a {kind}, not a regular file; point --key-file at the file itself",
                path.display()
            ),
            ReadError::TooLarge { path, size, limit } => write!(
                f,
                "key file {} is {size} bytes, more than the {limit}-byte limit; check that the path names the key file, \
                 or raise --max-key-file-bytes",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads the whole key file, which may be at most `max_bytes` long.
///
/// Opening uses `O_NONBLOCK`, so a FIFO at the path is reported as an error
/// instead of blocking until a writer appears.
pub fn read(path: &Path, max_bytes: u64) -> Result<Snapshot, ReadError> {
    let io_error = |error| ReadError::Io {
        path: path.to_path_buf(),
        error,
    };

    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;

    let file_type = metadata.file_type();
    if !file_type.is_file() {
        let kind = if file_type.is_dir() {
            "directory"
        } else if file_type.is_fifo() {
            "FIFO"
        } else if file_type.is_socket() {
            "socket"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "device"
        } else {
            "special file"
        };
        return Err(ReadError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let too_large = |size| ReadError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit: max_bytes,
    };
    if metadata.len() > max_bytes {
        return Err(too_large(metadata.len()));
    }

    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    // The file may have grown between fstat and read.
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }

    Ok(Snapshot {
        bytes,
        link_count: metadata.nlink(),
        mode: metadata.mode(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default of `--max-key-file-bytes`.
    const DEFAULT_MAX_KEY_FILE_BYTES: u64 = 1 << 20;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("keygate-keyfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn read_rejects_directory() {
        let dir = temp_dir("dir");
        let error = read(&dir, DEFAULT_MAX_KEY_FILE_BYTES).unwrap_err();
        assert!(
            matches!(
                error,
                ReadError::NotRegularFile {
                    kind: "directory",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn read_rejects_fifo_without_blocking() {
        let dir = temp_dir("fifo");
        let fifo = dir.join("keys");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let error = read(&fifo, DEFAULT_MAX_KEY_FILE_BYTES).unwrap_err();
        assert!(
            matches!(error, ReadError::NotRegularFile { kind: "FIFO", .. }),
            "{error}"
        );
    }

    #[test]
    fn read_rejects_oversized_file() {
        let dir = temp_dir("large");
        let path = dir.join("keys");
        std::fs::write(&path, vec![b'a'; DEFAULT_MAX_KEY_FILE_BYTES as usize + 1]).unwrap();
        let error = read(&path, DEFAULT_MAX_KEY_FILE_BYTES).unwrap_err();
        assert!(matches!(error, ReadError::TooLarge { .. }), "{error}");
        assert!(read(&path, DEFAULT_MAX_KEY_FILE_BYTES + 1).is_ok());
    }

    #[test]
    fn read_reports_missing_file() {
        let dir = temp_dir("missing");
        let error = read(&dir.join("absent"), DEFAULT_MAX_KEY_FILE_BYTES).unwrap_err();
        assert!(error.to_string().contains("absent"), "{error}");
    }

    #[test]
    fn read_rejects_device() {
        let error = read(Path::new("/dev/zero"), DEFAULT_MAX_KEY_FILE_BYTES).unwrap_err();
        assert!(
            matches!(error, ReadError::NotRegularFile { kind: "device", .. }),
            "{error}"
        );
    }
}
