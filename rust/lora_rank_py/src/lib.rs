//! `lora_rank._core`: a thin PyO3 layer over `lora_rank_core`. It converts types, releases the
//! GIL for all file and compute work, and maps core errors to Python exceptions in one place
//! ([`to_pyerr`]). No logic lives here.

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyPermissionError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use lora_rank_core::{checkpoint, spectral, Dtype, Error};

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

/// Spectral statistics of matrices streamed from safetensors shards (see `lora_rank.spectral`).
///
/// `shards`: `(path, size implied by the header)`; `jobs`: `(name, [(shard, offset, rows)],
/// cols, dtype)`. The scan runs on a worker thread with the GIL released; this thread wakes
/// every 100 ms to report progress and check for Ctrl-C (which cancels the scan).
/// Every setting is required: the defaults live in `lora_rank.spectral.settings`.
#[pyfunction]
#[pyo3(signature = (shards, jobs, *, top_k, method, rtol, max_iter, seed, threads, oversample,
                    progress=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn spectra<'py>(
    py: Python<'py>,
    shards: Vec<(std::path::PathBuf, u64)>,
    jobs: Vec<(String, Vec<(usize, u64, usize)>, usize, String)>,
    top_k: usize,
    method: &str,
    rtol: f64,
    max_iter: usize,
    seed: u64,
    threads: Option<usize>,
    oversample: usize,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    let value_error = pyo3::exceptions::PyValueError::new_err;
    let method = spectral::Method::parse(method)
        .ok_or_else(|| value_error(format!("unknown method {method:?}")))?;
    let settings = spectral::Settings {
        top_k,
        method,
        rtol,
        max_iter,
        seed,
        oversample,
    };
    settings.validate().map_err(value_error)?;
    let shards: Vec<spectral::ShardFile> = shards
        .into_iter()
        .map(|(path, expected_len)| spectral::ShardFile { path, expected_len })
        .collect();
    let jobs = jobs
        .into_iter()
        .map(|(name, segs, cols, dtype)| {
            let dtype = Dtype::parse(&dtype)
                .ok_or_else(|| value_error(format!("tensor {name:?}: unknown dtype {dtype:?}")))?;
            let segments = segs
                .into_iter()
                .map(|(shard, offset, rows)| spectral::SegmentSpec {
                    shard,
                    offset,
                    rows,
                })
                .collect();
            Ok(spectral::Job {
                name,
                segments,
                cols,
                dtype,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    let cancel = Arc::new(AtomicBool::new(false));
    let state = Arc::new(spectral::Progress::default());
    let finished_flag = Arc::new((Mutex::new(false), Condvar::new()));
    let worker = {
        let (cancel, state, flag) = (cancel.clone(), state.clone(), finished_flag.clone());
        std::thread::spawn(move || {
            let r = with_pool(threads, || {
                spectral::compute(&shards, &jobs, &settings, &cancel, &state)
            });
            *flag.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            flag.1.notify_all();
            r
        })
    };
    let mut reported = 0;
    let outcome: PyResult<()> = loop {
        let finished = py.detach(|| {
            let (lock, cv) = &*finished_flag;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let timeout = std::time::Duration::from_millis(100);
            let (guard, _) = cv
                .wait_timeout_while(guard, timeout, |done| !*done)
                .unwrap_or_else(|e| e.into_inner());
            *guard || worker.is_finished()
        });
        let mut step = py.check_signals();
        for job in state.finished_since(reported) {
            reported += 1;
            if let (Ok(()), Some(cb)) = (&step, &progress) {
                step = cb.call1((reported, names.len(), &names[job])).map(|_| ());
            }
        }
        if step.is_err() || finished {
            break step;
        }
    };
    if outcome.is_err() {
        cancel.store(true, Ordering::Relaxed);
    }
    let joined = py.detach(|| worker.join());
    outcome?;
    let results = joined
        .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("spectral worker panicked"))??
        .map_err(to_pyerr)?;
    let out = PyList::empty(py);
    for s in results {
        let d = PyDict::new(py);
        d.set_item("singular_values", s.singular_values)?;
        d.set_item("frobenius_norm", s.frobenius_norm)?;
        d.set_item("spectral_norm", s.spectral_norm)?;
        d.set_item("stable_rank", s.stable_rank)?;
        d.set_item("energy_rank_90", s.energy_ranks[0])?;
        d.set_item("energy_rank_95", s.energy_ranks[1])?;
        d.set_item("energy_rank_99", s.energy_ranks[2])?;
        d.set_item("energy_rank_exact", s.energy_rank_exact)?;
        d.set_item("alpha", s.alpha)?;
        d.set_item("nonfinite", s.nonfinite)?;
        d.set_item("method", s.method.name())?;
        d.set_item("iterations", s.iterations)?;
        d.set_item("converged", s.converged)?;
        out.append(d)?;
    }
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
    m.add_function(wrap_pyfunction!(spectra, m)?)?;
    Ok(())
}
