//! `lora_rank._core`: a thin PyO3 layer over `lora_rank_core`. It converts types, releases the
//! GIL for all file and compute work, and maps core errors to Python exceptions in one place
//! ([`to_pyerr`]). No logic lives here.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyPermissionError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use lora_rank_core::{checkpoint, Error};

create_exception!(
    lora_rank,
    LoraRankError,
    PyException,
    "Base class of every lora_rank error."
);
create_exception!(
    lora_rank,
    HeaderError,
    LoraRankError,
    "A safetensors header is malformed or disagrees with its file."
);
create_exception!(
    lora_rank,
    CheckpointIndexError,
    LoraRankError,
    "model.safetensors.index.json is malformed or disagrees with the shards."
);
create_exception!(
    lora_rank,
    UnsupportedFormatError,
    LoraRankError,
    "A format lora_rank refuses to read (pickle checkpoints, undecodable dtypes)."
);
create_exception!(
    lora_rank,
    NotACheckpointError,
    LoraRankError,
    "The path holds no safetensors checkpoint."
);
create_exception!(
    lora_rank,
    FileChangedError,
    LoraRankError,
    "A shard changed while it was being read."
);

/// Map a core error to the matching Python exception (OS errors keep errno and filename).
fn to_pyerr(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Io { path, source } => {
            let filename = path.display().to_string();
            let errno = source.raw_os_error().unwrap_or(0);
            let args = (errno, source.to_string(), filename);
            match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(args),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(args),
                _ => PyOSError::new_err(args),
            }
        }
        Error::Header { .. } => HeaderError::new_err(msg),
        Error::Index { .. } => CheckpointIndexError::new_err(msg),
        Error::Unsupported { .. } => UnsupportedFormatError::new_err(msg),
        Error::NotACheckpoint { .. } => NotACheckpointError::new_err(msg),
        Error::Changed { .. } => FileChangedError::new_err(msg),
        Error::Interrupted => PyKeyboardInterrupt::new_err("interrupted"),
    }
}

/// Run `f` on a rayon pool of `threads` threads (the global pool when `None`).
fn with_pool<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    match threads {
        None => Ok(f()),
        Some(0) => Err(pyo3::exceptions::PyValueError::new_err(
            "threads must be at least 1",
        )),
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| PyOSError::new_err(e.to_string()))?;
            Ok(pool.install(f))
        }
    }
}

/// Resolve a checkpoint and read all its headers (no tensor data).
#[pyfunction]
#[pyo3(signature = (path, threads=None))]
fn open_checkpoint<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let ckpt = py
        .detach(|| with_pool(threads, || checkpoint::open(&path)))?
        .map_err(to_pyerr)?;
    let out = PyDict::new(py);
    out.set_item("root", ckpt.root.display().to_string())?;
    out.set_item(
        "index_path",
        ckpt.index_path.as_ref().map(|p| p.display().to_string()),
    )?;
    out.set_item("config_json", &ckpt.config_json)?;
    let shards = PyList::empty(py);
    for s in &ckpt.shards {
        let d = PyDict::new(py);
        d.set_item("path", s.path.display().to_string())?;
        d.set_item("name", &s.name)?;
        d.set_item("size", s.stamp.len)?;
        d.set_item("header_len", s.header.header_len)?;
        d.set_item("metadata", s.header.metadata.clone())?;
        shards.append(d)?;
    }
    out.set_item("shards", shards)?;
    let tensors = PyList::empty(py);
    for t in &ckpt.tensors {
        let shape = PyTuple::new(py, &t.shape)?;
        tensors.append((
            t.name.as_str(),
            t.dtype.name(),
            shape,
            t.shard,
            t.begin,
            t.end,
        ))?;
    }
    out.set_item("tensors", tensors)?;
    Ok(out)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("LoraRankError", py.get_type::<LoraRankError>())?;
    m.add("HeaderError", py.get_type::<HeaderError>())?;
    m.add(
        "CheckpointIndexError",
        py.get_type::<CheckpointIndexError>(),
    )?;
    m.add(
        "UnsupportedFormatError",
        py.get_type::<UnsupportedFormatError>(),
    )?;
    m.add("NotACheckpointError", py.get_type::<NotACheckpointError>())?;
    m.add("FileChangedError", py.get_type::<FileChangedError>())?;
    m.add_function(wrap_pyfunction!(open_checkpoint, m)?)?;
    Ok(())
}
