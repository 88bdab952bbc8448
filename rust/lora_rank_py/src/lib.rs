//! `lora_rank._core`: a thin PyO3 layer over `lora_rank_core`. It converts types, releases the
//! GIL for all file and compute work, and maps core errors to Python exceptions in one place
//! ([`to_pyerr`]). No logic lives here.

use std::collections::HashMap;

use pyo3::create_exception;
use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyPermissionError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use lora_rank_core::{checkpoint, names, quant, spectral, Dtype, Error};

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
    checkpoint_dict(py, &ckpt)
}

/// The checkpoint described by shard headers fetched elsewhere (e.g. by HTTP range requests),
/// validated exactly as `open_checkpoint` validates files.
///
/// `index`: `(path, bytes of *.safetensors.index.json)`; `shards`: `(name, path, file size,
/// first bytes of the file)`, the first bytes holding at least the whole header.
#[pyfunction]
#[pyo3(signature = (root, index, config_json, shards, threads=None))]
fn checkpoint_from_headers<'py>(
    py: Python<'py>,
    root: std::path::PathBuf,
    index: Option<(std::path::PathBuf, Vec<u8>)>,
    config_json: Option<String>,
    shards: Vec<(String, std::path::PathBuf, u64, Vec<u8>)>,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let shards = shards
        .into_iter()
        .map(|(name, path, len, prefix)| checkpoint::ShardPrefix {
            name,
            path,
            len,
            prefix,
        })
        .collect();
    let ckpt = py
        .detach(|| {
            with_pool(threads, || {
                let index = index.as_ref().map(|(p, b)| (p.clone(), b.as_slice()));
                checkpoint::from_headers(root, index, config_json, shards)
            })
        })?
        .map_err(to_pyerr)?;
    checkpoint_dict(py, &ckpt)
}

/// `(patterns, pattern_of, indices)` of `names`: each name's layer and expert indices (parts of
/// ASCII digits after the first, with their dot) replaced by `.{placeholder}`; the distinct
/// patterns in the order first seen, each name's pattern number and its indices.
#[pyfunction]
fn name_patterns<'py>(
    py: Python<'py>,
    names: Vec<String>,
    placeholder: &str,
) -> PyResult<(Vec<String>, Vec<usize>, Bound<'py, PyList>)> {
    let p = names::name_patterns(&names, placeholder);
    // Index strings repeat (".0" … ".255" for 45k expert keys): one str object per value.
    let mut cache: HashMap<&str, Bound<'py, PyString>> = HashMap::new();
    let indices = PyList::empty(py);
    for i in &p.indices {
        let row = PyList::empty(py);
        for s in i {
            let obj = cache
                .entry(*s)
                .or_insert_with(|| PyString::new(py, s))
                .clone();
            row.append(obj)?;
        }
        indices.append(row)?;
    }
    Ok((p.patterns, p.pattern_of, indices))
}

/// The permutation that sorts `names` in natural order (parts split at dots; parts of ASCII
/// digits by value, before words; stable).
#[pyfunction]
fn natural_order(names: Vec<String>) -> Vec<usize> {
    names::natural_order(&names)
}

/// Whether this CPU runs the spectral engine's AVX-512 BF16 kernels (else bf16 passes decode
/// to f32).
#[pyfunction]
fn bf16_kernels_available() -> bool {
    lora_rank_core::spectral::kernels::available()
}

/// Whether this CPU runs the spectral engine's AVX-512F kernels on f32 panels (else faer's
/// matmul).
#[pyfunction]
fn f32_kernels_available() -> bool {
    lora_rank_core::spectral::f32_kernels::available()
}

/// The pass the spectral engine runs in this process: `"bf16"` (the AVX-512 BF16 kernels on
/// bf16 and quantized matrices, `"f32"` on the rest), `"f32"` (decode + the AVX-512F
/// kernels) or `"faer"` (decode + faer's matmul): `LORA_RANK_KERNEL` when set, else measured
/// once on a CPU with AVX-512 BF16, else the best this CPU has (see
/// `spectral::solver::pass_kernel`).
#[pyfunction]
fn pass_kernel() -> &'static str {
    lora_rank_core::spectral::solver::pass_kernel().name()
}

/// The JSON length announced by the first bytes of a safetensors file of `file_len` bytes
/// (HeaderError naming `path` past the format's limit or the file's size).
#[pyfunction]
fn header_length(prefix: &[u8], file_len: u64, path: std::path::PathBuf) -> PyResult<u64> {
    lora_rank_core::header::header_len(prefix, file_len)
        .map_err(|m| to_pyerr(Error::Header { path, msg: m }))
}

/// The `weight_map` (tensor → shard) of the bytes of an index file named `path`, shard names
/// checked to stay inside the checkpoint (CheckpointIndexError otherwise).
#[pyfunction]
fn parse_index(
    data: &[u8],
    path: std::path::PathBuf,
) -> PyResult<std::collections::BTreeMap<String, String>> {
    checkpoint::parse_index_json(data).map_err(|m| to_pyerr(Error::Index { path, msg: m }))
}

fn checkpoint_dict<'py>(
    py: Python<'py>,
    ckpt: &checkpoint::Checkpoint,
) -> PyResult<Bound<'py, PyDict>> {
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
    // One str object per dtype and one tuple per shape, shared by their tensors (DeepSeek-V3:
    // 90k tensors, 3 dtypes, a few hundred shapes): fewer objects to make, track and free.
    let mut dtypes: Vec<(&'static str, Bound<'py, PyString>)> = Vec::new();
    let mut shapes: HashMap<&[u64], Bound<'py, PyTuple>> = HashMap::new();
    for t in &ckpt.tensors {
        let shape = match shapes.get(t.shape.as_slice()) {
            Some(s) => s.clone(),
            None => {
                let s = PyTuple::new(py, &t.shape)?;
                shapes.insert(t.shape.as_slice(), s.clone());
                s
            }
        };
        let name = t.dtype.name();
        let dtype = match dtypes.iter().find(|(n, _)| *n == name) {
            Some((_, s)) => s.clone(),
            None => {
                let s = PyString::new(py, name);
                dtypes.push((name, s.clone()));
                s
            }
        };
        tensors.append((t.name.as_str(), dtype, shape, t.shard, t.begin, t.end))?;
    }
    out.set_item("tensors", tensors)?;
    Ok(out)
}

/// `(name, shard, offset, shape, dtype)` of an auxiliary tensor of a quantized weight.
type AuxTuple = (String, usize, u64, Vec<usize>, String);
/// `(format, weight name, bits, (block rows, block cols), zero offset, scales, zeros, g_idx,
/// further aux tensors, offset)` (see `lora_rank_core::quant::QuantSpec`).
type QuantTuple = (
    String,
    String,
    u32,
    (usize, usize),
    u32,
    AuxTuple,
    Option<AuxTuple>,
    Option<AuxTuple>,
    Vec<AuxTuple>,
    f32,
);
type JobTuple = (String, Vec<(usize, u64, usize)>, usize, String);

fn parse_dtype(name: &str, dtype: &str) -> PyResult<Dtype> {
    Dtype::parse(dtype).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!("tensor {name:?}: unknown dtype {dtype:?}"))
    })
}

fn to_aux((name, shard, offset, shape, dtype): AuxTuple) -> PyResult<quant::AuxTensor> {
    let dtype = parse_dtype(&name, &dtype)?;
    Ok(quant::AuxTensor {
        name,
        shard,
        offset,
        shape,
        dtype,
    })
}

fn to_quant(q: QuantTuple) -> PyResult<quant::QuantSpec> {
    let (format, weight, bits, block, zero_offset, scales, zeros, g_idx, extra, offset) = q;
    let format = quant::Format::parse(&format).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "tensor {weight:?}: unknown quantization format {format:?}"
        ))
    })?;
    Ok(quant::QuantSpec {
        format,
        weight,
        bits,
        block: [block.0, block.1],
        zero_offset,
        scales: to_aux(scales)?,
        zeros: zeros.map(to_aux).transpose()?,
        g_idx: g_idx.map(to_aux).transpose()?,
        extra: extra.into_iter().map(to_aux).collect::<PyResult<_>>()?,
        offset,
    })
}

/// The subtracted matrix of a delta job: its job tuple and per-segment quantization.
type MinusTuple = (JobTuple, Option<Vec<QuantTuple>>);

/// Engine jobs from Python tuples; `quant[i]` (when given) is job i's per-segment
/// quantization, None for a plain matrix; `minus[i]` (when given) makes job i a delta: that
/// job's matrix minus this one's.
fn to_jobs(
    jobs: Vec<JobTuple>,
    quant: Option<Vec<Option<Vec<QuantTuple>>>>,
    minus: Option<Vec<Option<MinusTuple>>>,
) -> PyResult<Vec<spectral::Job>> {
    let mut minus = minus.unwrap_or_default().into_iter();
    let mut out = to_plain_jobs(jobs, quant)?;
    for job in &mut out {
        if let Some((base, quant)) = minus.next().flatten() {
            let base = to_plain_jobs(vec![base], Some(vec![quant]))?.remove(0);
            job.minus = Some(Box::new(base));
        }
    }
    Ok(out)
}

/// [`to_jobs`] without deltas.
fn to_plain_jobs(
    jobs: Vec<JobTuple>,
    quant: Option<Vec<Option<Vec<QuantTuple>>>>,
) -> PyResult<Vec<spectral::Job>> {
    let mut quant = quant.unwrap_or_default().into_iter();
    jobs.into_iter()
        .map(|(name, segs, cols, dtype)| {
            let dtype = parse_dtype(&name, &dtype)?;
            let segments = segs
                .into_iter()
                .map(|(shard, offset, rows)| spectral::SegmentSpec {
                    shard,
                    offset,
                    rows,
                })
                .collect();
            let quant = quant
                .next()
                .flatten()
                .unwrap_or_default()
                .into_iter()
                .map(to_quant)
                .collect::<PyResult<Vec<_>>>()?;
            Ok(spectral::Job {
                name,
                segments,
                cols,
                dtype,
                quant,
                minus: None,
            })
        })
        .collect()
}

/// The decoded (dequantized for quantized weights) matrix of one job as little-endian f32
/// bytes, row-major: a check for small matrices (tests), never used by the spectral scan.
/// With `minus`, the delta: this job's matrix minus that one's (a fine-tune's update).
#[pyfunction]
#[pyo3(signature = (shards, job, quant=None, minus=None))]
fn read_matrix<'py>(
    py: Python<'py>,
    shards: Vec<(std::path::PathBuf, u64)>,
    job: JobTuple,
    quant: Option<Vec<QuantTuple>>,
    minus: Option<MinusTuple>,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let shards: Vec<spectral::ShardFile> = shards
        .into_iter()
        .map(|(path, expected_len)| spectral::ShardFile { path, expected_len })
        .collect();
    let job = to_jobs(vec![job], Some(vec![quant]), Some(vec![minus]))?.remove(0);
    let values = py
        .detach(|| spectral::read_matrix(&shards, &job))
        .map_err(to_pyerr)?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(pyo3::types::PyBytes::new(py, &bytes))
}

/// Spectral statistics of matrices streamed from safetensors shards (see `lora_rank.spectral`).
///
/// `shards`: `(path, size implied by the header)`; `jobs`: `(name, [(shard, offset, rows)],
/// cols, dtype)`; `quant`: per job, None or one quantization tuple per segment (then rows
/// and cols are the logical ones; see `lora_rank_core::quant`); `minus`: per job, None or
/// `(job, quant)` of the matrix subtracted from it (a delta ΔW = W − W_base, streamed from
/// both; `shards` then lists both checkpoints' files). The scan runs on a worker thread with
/// the GIL released; this thread wakes every 100 ms to report progress and check for Ctrl-C
/// (which cancels the scan).
/// `settings`: a `SpectralSettings` (its fields are read by name; the defaults live there).
#[pyfunction]
#[pyo3(signature = (shards, jobs, settings, *, progress=None, quant=None, minus=None))]
#[allow(clippy::type_complexity)]
fn spectra<'py>(
    py: Python<'py>,
    shards: Vec<(std::path::PathBuf, u64)>,
    jobs: Vec<(String, Vec<(usize, u64, usize)>, usize, String)>,
    settings: SettingsArg,
    progress: Option<Bound<'py, PyAny>>,
    quant: Option<Vec<Option<Vec<QuantTuple>>>>,
    minus: Option<Vec<Option<MinusTuple>>>,
) -> PyResult<Bound<'py, PyList>> {
    let shards: Vec<spectral::ShardFile> = shards
        .into_iter()
        .map(|(path, expected_len)| spectral::ShardFile { path, expected_len })
        .collect();
    let jobs = to_jobs(jobs, quant, minus)?;
    scan(py, Shards::Files(shards), jobs, settings, progress)
}

/// ‖W‖_F of each job's matrix, streamed (of the difference for a job with a `minus`; NaN when
/// it holds NaN/Inf); `quant` and `minus` as in `spectra`.
#[pyfunction]
#[pyo3(signature = (shards, jobs, *, quant=None, minus=None, threads=None))]
fn frobenius_norms(
    py: Python<'_>,
    shards: Vec<(std::path::PathBuf, u64)>,
    jobs: Vec<JobTuple>,
    quant: Option<Vec<Option<Vec<QuantTuple>>>>,
    minus: Option<Vec<Option<MinusTuple>>>,
    threads: Option<usize>,
) -> PyResult<Vec<f64>> {
    let shards: Vec<spectral::ShardFile> = shards
        .into_iter()
        .map(|(path, expected_len)| spectral::ShardFile { path, expected_len })
        .collect();
    let jobs = to_jobs(jobs, quant, minus)?;
    py.detach(|| with_pool(threads, || spectral::frobenius_norms(&shards, &jobs)))?
        .map_err(to_pyerr)
}

/// Exact spectra of LoRA updates scaling·B·A from their factors (never formed; see
/// `lora_rank_core::spectral::factors`): `modules` are `(A job (r × in), B job (out × r),
/// scaling)`, read from `shards`; one result dict per module, as `spectra` returns, for the
/// out × in product, with `top_k` singular values.
#[pyfunction]
#[pyo3(signature = (shards, modules, top_k, *, threads=None))]
fn product_spectra<'py>(
    py: Python<'py>,
    shards: Vec<(std::path::PathBuf, u64)>,
    modules: Vec<(JobTuple, JobTuple, f64)>,
    top_k: usize,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyList>> {
    let shards: Vec<spectral::ShardFile> = shards
        .into_iter()
        .map(|(path, expected_len)| spectral::ShardFile { path, expected_len })
        .collect();
    let mut factors = Vec::with_capacity(modules.len());
    for (a, b, scaling) in modules {
        let mut jobs = to_jobs(vec![a, b], None, None)?.into_iter();
        let (a, b) = (
            jobs.next().expect("two jobs"),
            jobs.next().expect("two jobs"),
        );
        factors.push(spectral::factors::Factors { a, b, scaling });
    }
    let results = py
        .detach(|| {
            with_pool(threads, || {
                spectral::factors::product_spectra(&shards, &factors, top_k)
            })
        })?
        .map_err(to_pyerr)?;
    let out = PyList::empty(py);
    for s in &results {
        out.append(spectrum_dict(py, s)?)?;
    }
    Ok(out)
}

/// A fixed-size byte buffer filled piece by piece (e.g. from an HTTP response body) and handed
/// to [`spectra_in_memory`], which takes its bytes (the buffer is empty afterwards): a matrix
/// fetched into it is held once, never joined or copied whole.
#[pyclass(module = "lora_rank._core")]
struct ByteBuffer {
    data: Vec<u8>,
}

#[pymethods]
impl ByteBuffer {
    #[new]
    fn new(size: usize) -> Self {
        ByteBuffer {
            data: vec![0; size],
        }
    }

    /// Copy `data` to `offset` (ValueError past the end).
    fn write(&mut self, offset: usize, data: &[u8]) -> PyResult<()> {
        let end = offset
            .checked_add(data.len())
            .filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "{} bytes at offset {offset} do not fit in a buffer of {}",
                data.len(),
                self.data.len()
            )));
        };
        self.data[offset..end].copy_from_slice(data);
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.data.len()
    }
}

/// [`spectra`] on byte ranges of shards held in memory: `buffers` are `(path, absolute start
/// offset in the shard, ByteBuffer)` (their bytes are taken: the buffers are empty afterwards),
/// and a job's segments refer to a buffer by index, with absolute shard offsets. The same
/// solver, so the same spectra as from the files.
#[pyfunction]
#[pyo3(signature = (buffers, jobs, settings, *, progress=None))]
#[allow(clippy::type_complexity)]
fn spectra_in_memory<'py>(
    py: Python<'py>,
    buffers: Vec<(std::path::PathBuf, u64, PyRefMut<'py, ByteBuffer>)>,
    jobs: Vec<(String, Vec<(usize, u64, usize)>, usize, String)>,
    settings: SettingsArg,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let memory = buffers
        .into_iter()
        .map(|(path, start, mut buf)| (path, start, std::mem::take(&mut buf.data)))
        .collect();
    let jobs = to_jobs(jobs, None, None)?;
    scan(py, Shards::Memory(memory), jobs, settings, progress)
}

enum Shards {
    Files(Vec<spectral::ShardFile>),
    /// `(path, absolute start offset, bytes)`.
    Memory(Vec<(std::path::PathBuf, u64, Vec<u8>)>),
}

impl Shards {
    fn compute(
        &self,
        jobs: &[spectral::Job],
        settings: &spectral::Settings,
        cancel: &std::sync::atomic::AtomicBool,
        progress: &spectral::Progress,
    ) -> lora_rank_core::Result<Vec<spectral::Spectrum>> {
        match self {
            Shards::Files(files) => spectral::compute(files, jobs, settings, cancel, progress),
            Shards::Memory(buffers) => {
                let shards: Vec<spectral::ShardBytes> = buffers
                    .iter()
                    .map(|(path, start, data)| {
                        spectral::ShardBytes::Memory(spectral::MemoryShard {
                            path,
                            start: *start,
                            data,
                        })
                    })
                    .collect();
                spectral::compute_from(&shards, jobs, settings, cancel, progress)
            }
        }
    }
}

/// The `settings` argument of `spectra`: read attribute by attribute from a
/// `lora_rank.spectral.settings.SpectralSettings` (its defaults are the only ones; Rust
/// validates what it is given).
#[derive(FromPyObject)]
struct SettingsArg {
    top_k: usize,
    method: String,
    rtol: f64,
    max_iter: usize,
    seed: u64,
    threads: Option<usize>,
    oversample: usize,
}

/// Run a scan on a worker thread with the GIL released, reporting progress and checking for
/// Ctrl-C every 100 ms, and convert the results.
#[allow(clippy::type_complexity)]
fn scan<'py>(
    py: Python<'py>,
    shards: Shards,
    jobs: Vec<spectral::Job>,
    given: SettingsArg,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    let value_error = pyo3::exceptions::PyValueError::new_err;
    let method = spectral::Method::parse(&given.method)
        .ok_or_else(|| value_error(format!("unknown method {:?}", given.method)))?;
    let settings = spectral::Settings {
        top_k: given.top_k,
        method,
        rtol: given.rtol,
        max_iter: given.max_iter,
        seed: given.seed,
        oversample: given.oversample,
        kernel: None,
    };
    let threads = given.threads;
    settings.validate().map_err(value_error)?;
    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    let cancel = Arc::new(AtomicBool::new(false));
    let state = Arc::new(spectral::Progress::default());
    let finished_flag = Arc::new((Mutex::new(false), Condvar::new()));
    let worker = {
        let (cancel, state, flag) = (cancel.clone(), state.clone(), finished_flag.clone());
        std::thread::spawn(move || {
            let r = with_pool(threads, || {
                shards.compute(&jobs, &settings, &cancel, &state)
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
    for s in &results {
        out.append(spectrum_dict(py, s)?)?;
    }
    Ok(out)
}

/// The result dict of one spectrum: exactly the fields of `lora_rank.Spectrum`, in order.
fn spectrum_dict<'py>(py: Python<'py>, s: &spectral::Spectrum) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("singular_values", s.singular_values.clone())?;
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
    d.set_item("sv_error", s.sv_error)?;
    d.set_item("energy_rank_stderr", s.energy_rank_stderr.to_vec())?;
    let sh = &s.shape;
    d.set_item("sv_quantiles", sh.sv_quantiles.to_vec())?;
    d.set_item("mp_sigma", sh.mp_sigma)?;
    d.set_item("mp_edge", sh.mp_edge)?;
    d.set_item("mp_spikes", sh.mp_spikes)?;
    d.set_item("spectrum_snr", sh.spectrum_snr)?;
    d.set_item("mp_snr", sh.mp_snr)?;
    d.set_item("pl_alpha", sh.pl_alpha)?;
    d.set_item("pl_xmin", sh.pl_xmin)?;
    Ok(d)
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
    m.add_function(wrap_pyfunction!(spectra_in_memory, m)?)?;
    m.add_class::<ByteBuffer>()?;
    m.add_function(wrap_pyfunction!(checkpoint_from_headers, m)?)?;
    m.add_function(wrap_pyfunction!(header_length, m)?)?;
    m.add_function(wrap_pyfunction!(parse_index, m)?)?;
    m.add_function(wrap_pyfunction!(name_patterns, m)?)?;
    m.add_function(wrap_pyfunction!(natural_order, m)?)?;
    m.add_function(wrap_pyfunction!(bf16_kernels_available, m)?)?;
    m.add_function(wrap_pyfunction!(pass_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(f32_kernels_available, m)?)?;
    m.add_function(wrap_pyfunction!(read_matrix, m)?)?;
    m.add_function(wrap_pyfunction!(product_spectra, m)?)?;
    m.add_function(wrap_pyfunction!(frobenius_norms, m)?)?;
    Ok(())
}
