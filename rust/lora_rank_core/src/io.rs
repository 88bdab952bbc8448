//! Positioned reads that never touch a memory mapping: a file truncated underneath us yields
//! an error (short read), never SIGBUS.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Fill `buf` from `file` at `offset`, or fail naming `path` (a short read means truncation).
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64, path: &Path) -> Result<()> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Changed {
            path: path.to_path_buf(),
            msg: format!(
                "could not read {} bytes at offset {offset}: the file is shorter than its header says (truncated?)",
                buf.len()
            ),
        }),
        Err(e) => Err(Error::io(path, e)),
    }
}
