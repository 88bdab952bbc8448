//! One error type for the whole core crate. Every variant names the file and, where known,
//! the tensor, so that a message is actionable on its own.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused or failed an operation on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A safetensors header is malformed or inconsistent with its file.
    #[error("{}: invalid safetensors header: {msg}", path.display())]
    Header { path: PathBuf, msg: String },
    /// `model.safetensors.index.json` is malformed or disagrees with the shards.
    #[error("{}: invalid checkpoint index: {msg}", path.display())]
    Index { path: PathBuf, msg: String },
    /// A format we refuse to read (pickled `.bin`/`.pt`), or a dtype we cannot decode.
    #[error("{}: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
    /// The path exists but holds no safetensors checkpoint.
    #[error("{}: not a safetensors checkpoint: {msg}", path.display())]
    NotACheckpoint { path: PathBuf, msg: String },
    /// A shard changed (size, mtime or content) while it was being read.
    #[error("{}: file changed while it was being read: {msg}", path.display())]
    Changed { path: PathBuf, msg: String },
    /// The caller asked to stop (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn header(path: &Path, msg: impl Into<String>) -> Self {
        Error::Header {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn index(path: &Path, msg: impl Into<String>) -> Self {
        Error::Index {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn unsupported(path: &Path, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn not_a_checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        Error::NotACheckpoint {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
