//! Positioned reads that never touch a memory mapping: a file truncated underneath us yields
//! an error (short read), never SIGBUS. [`ByteSource`] puts an open file and bytes already in
//! memory (e.g. fetched from a remote shard by HTTP range requests) behind the same read.

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

/// Where the bytes of a shard are read from: an open file, or the bytes `start..start +
/// data.len()` of the shard held in memory. Offsets are always absolute offsets in the shard.
#[derive(Debug, Clone, Copy)]
pub enum ByteSource<'a> {
    File(&'a File),
    Memory { start: u64, data: &'a [u8] },
}

impl<'a> ByteSource<'a> {
    /// Fill `buf` with the shard's bytes at `offset` (see [`read_exact_at`]); a range outside
    /// the bytes held in memory is an error naming `path`, never a panic.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64, path: &Path) -> Result<()> {
        match *self {
            ByteSource::File(file) => read_exact_at(file, buf, offset, path),
            ByteSource::Memory { .. } => {
                let held = self.held(buf.len(), offset, path)?;
                buf.copy_from_slice(held.expect("memory"));
                Ok(())
            }
        }
    }

    /// The `len` bytes at `offset` without a copy when they are held in memory (`None` for a
    /// file); a range outside the bytes held is an error naming `path`, as for
    /// [`ByteSource::read_exact_at`].
    pub fn held(&self, len: usize, offset: u64, path: &Path) -> Result<Option<&'a [u8]>> {
        let ByteSource::Memory { start, data } = *self else {
            return Ok(None);
        };
        let range = offset
            .checked_sub(start)
            .and_then(|lo| usize::try_from(lo).ok())
            .and_then(|lo| Some(lo..lo.checked_add(len)?))
            .filter(|r| r.end <= data.len());
        match range {
            Some(range) => Ok(Some(&data[range])),
            None => Err(Error::Changed {
                path: path.to_path_buf(),
                msg: format!(
                    "could not read {len} bytes at offset {offset}: outside the {} bytes \
                     held at offset {start}",
                    data.len()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_use_absolute_offsets_and_refuse_outside_ranges() {
        let data: Vec<u8> = (0..10).collect();
        let src = ByteSource::Memory {
            start: 100,
            data: &data,
        };
        let path = Path::new("hf://org/name/model.safetensors");
        let mut buf = [0u8; 3];
        src.read_exact_at(&mut buf, 104, path).unwrap();
        assert_eq!(buf, [4, 5, 6]);
        for offset in [99, 108, u64::MAX] {
            let err = src.read_exact_at(&mut buf, offset, path).unwrap_err();
            assert!(matches!(err, Error::Changed { .. }), "{err}");
            assert!(err.to_string().contains("model.safetensors"), "{err}");
        }
    }
}
