//! Spectral statistics of every weight matrix of a checkpoint, streamed from the shards.
//!
//! - [`source`]: positioned reads of row panels, decoded from the stored dtype to `f32`;
//! - [`solver`]: randomized block Krylov (top-k singular values) and the exact Gram mode;
//! - [`stats`]: stable rank, energy ranks, Hill α.
//!
//! [`compute`] runs a list of [`Job`]s (one matrix each: a stored 2-D tensor, an expert slice
//! of a 3-D tensor, or the row stack of several stored tensors that transformers fuses) on the
//! current rayon pool: large matrices one at a time with their panels in parallel, small ones
//! in parallel with each other. Results are deterministic for a given seed and pool size.
//! Memory stays bounded by the Krylov basis (columns × `top_k + oversampling` × iterations,
//! f32) plus one decoded panel per thread: never a full copy of a matrix.

pub mod solver;
pub mod source;
pub mod stats;

use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use faer::Par;
use rayon::prelude::*;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use solver::{Outcome, SolverConfig};
use source::{MatrixSource, Segment};

/// Matrices with fewer elements than this are small: processed single-threaded, several at once.
const LARGE_ELEMENTS: usize = 1 << 20;
/// `auto` uses the exact mode when min(rows, cols) is at most this (or twice the block).
const EXACT_MAX_DIM: usize = 512;
/// Target elements of one decoded panel (4 MiB of f32).
const PANEL_ELEMENTS: usize = 1 << 20;

/// How singular values are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Exact for small matrices, randomized otherwise.
    Auto,
    Randomized,
    Exact,
}

impl Method {
    /// Parse `"auto"`, `"randomized"` or `"exact"`.
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "auto" => Some(Method::Auto),
            "randomized" => Some(Method::Randomized),
            "exact" => Some(Method::Exact),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Auto => "auto",
            Method::Randomized => "randomized",
            Method::Exact => "exact",
        }
    }
}

/// Settings of one [`compute`] call. The defaults live in one place, Python's
/// `lora_rank.spectral.settings.SpectralSettings`, which passes every field; this crate only
/// validates them ([`Settings::validate`]).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub top_k: usize,
    pub method: Method,
    /// Convergence tolerance of the randomized solver: the estimated relative error of every
    /// top-k singular value at which it stops.
    pub rtol: f64,
    /// Cap on randomized iterations (passes over the matrix).
    pub max_iter: usize,
    pub seed: u64,
    /// Extra Krylov block columns beyond `top_k`.
    pub oversample: usize,
}

impl Settings {
    /// Why these settings cannot run, if they cannot.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.top_k == 0 {
            return Err("top_k must be at least 1".into());
        }
        if !(self.rtol > 0.0 && self.rtol < 1.0) {
            return Err(format!("rtol must be in (0, 1), not {}", self.rtol));
        }
        if self.max_iter == 0 {
            return Err("max_iter must be at least 1".into());
        }
        Ok(())
    }
}

/// Test fixture: the values of Python's `SpectralSettings()`.
#[cfg(test)]
impl Default for Settings {
    fn default() -> Self {
        Settings {
            top_k: 32,
            method: Method::Auto,
            rtol: 3e-3,
            max_iter: 24,
            seed: 0,
            oversample: 8,
        }
    }
}

/// A shard file and the size its header implies (data start + data length).
#[derive(Debug, Clone)]
pub struct ShardFile {
    pub path: PathBuf,
    pub expected_len: u64,
}

/// `rows` full rows of a matrix at absolute byte `offset` of shard `shard`.
#[derive(Debug, Clone, Copy)]
pub struct SegmentSpec {
    pub shard: usize,
    pub offset: u64,
    pub rows: usize,
}

/// One matrix: the row concatenation of `segments`, each `cols` wide, stored as `dtype`.
#[derive(Debug, Clone)]
pub struct Job {
    /// Tensor name (with `[expert]` for a slice), used in messages and for the seed.
    pub name: String,
    pub segments: Vec<SegmentSpec>,
    pub cols: usize,
    pub dtype: Dtype,
}

impl Job {
    pub fn rows(&self) -> usize {
        self.segments.iter().map(|s| s.rows).sum()
    }
}

/// Spectral statistics of one matrix (see `lora_rank.Spectrum` for the meaning of fields).
#[derive(Debug, Clone)]
pub struct Spectrum {
    /// Top-k singular values, descending.
    pub singular_values: Vec<f64>,
    pub frobenius_norm: f64,
    pub spectral_norm: f64,
    pub stable_rank: f64,
    /// Energy ranks at 90/95/99% (0 when the matrix holds NaN/Inf).
    pub energy_ranks: [usize; 3],
    pub energy_rank_exact: bool,
    pub alpha: f64,
    pub nonfinite: u64,
    /// `Exact` or `Randomized`: what was used.
    pub method: Method,
    pub iterations: usize,
    pub converged: bool,
}

/// Indices of the jobs finished so far, in the order they finished, for a progress display
/// polled from another thread ([`Progress::finished_since`]).
#[derive(Debug, Default)]
pub struct Progress {
    finished: Mutex<Vec<usize>>,
}

impl Progress {
    fn finish(&self, job: usize) {
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(job);
    }

    /// Jobs finished after the first `seen` ones, in finishing order.
    pub fn finished_since(&self, seen: usize) -> Vec<usize> {
        let f = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        f.get(seen..).map(<[usize]>::to_vec).unwrap_or_default()
    }
}

/// Size and modification time (ns since the epoch) of a path, following symlinks.
fn stamp(path: &Path) -> Result<(u64, i128)> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    Ok((meta.len(), mtime))
}

struct OpenShard {
    path: PathBuf,
    file: File,
    stamp: (u64, i128),
}

impl OpenShard {
    fn open(shard: &ShardFile) -> Result<OpenShard> {
        let path = shard.path.clone();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let stamp = stamp(&path)?;
        if stamp.0 != shard.expected_len {
            return Err(Error::Changed {
                path,
                msg: format!(
                    "it is {} bytes long, but its header describes {} bytes",
                    stamp.0, shard.expected_len
                ),
            });
        }
        Ok(OpenShard { path, file, stamp })
    }

    fn check_unchanged(&self, tensor: &str) -> Result<()> {
        let now = stamp(&self.path)?;
        if now != self.stamp {
            return Err(Error::Changed {
                path: self.path.clone(),
                msg: format!(
                    "size or modification time changed around tensor {tensor:?} \
                     ({} → {} bytes)",
                    self.stamp.0, now.0
                ),
            });
        }
        Ok(())
    }

    fn advise(&self, offset: u64, len: u64, advice: libc::c_int) {
        // Only a hint: failures are ignored.
        // SAFETY: posix_fadvise reads no memory; the descriptor is open for our lifetime.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                advice,
            );
        }
    }
}

fn validate(shards: &[ShardFile], job: &Job) -> Result<()> {
    let first = job
        .segments
        .first()
        .and_then(|s| shards.get(s.shard))
        .map_or_else(|| PathBuf::from("<checkpoint>"), |s| s.path.clone());
    if !job.dtype.is_decodable_float() {
        return Err(Error::Unsupported {
            path: first,
            msg: format!(
                "tensor {:?} has dtype {}: spectra need F32, F16, BF16, F64, F8_E4M3 or F8_E5M2",
                job.name,
                job.dtype.name()
            ),
        });
    }
    let esize = job.dtype.byte_size().unwrap_or(1) as u64;
    for s in &job.segments {
        let shard = shards.get(s.shard).ok_or_else(|| Error::Header {
            path: first.clone(),
            msg: format!(
                "tensor {:?} refers to shard {} of {}",
                job.name,
                s.shard,
                shards.len()
            ),
        })?;
        let end = s.offset + s.rows as u64 * job.cols as u64 * esize;
        if end > shard.expected_len {
            return Err(Error::Header {
                path: shard.path.clone(),
                msg: format!(
                    "tensor {:?} ends at byte {end}, past the end of the file",
                    job.name
                ),
            });
        }
    }
    Ok(())
}

/// Per-job seed: the user's seed mixed with the tensor name (FNV-1a), so a matrix gets the same
/// start vectors whatever else is analyzed with it.
fn job_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn block_size(settings: &Settings) -> usize {
    settings.top_k + settings.oversample
}

/// Which method a matrix gets.
pub fn resolve_method(settings: &Settings, rows: usize, cols: usize) -> Method {
    match settings.method {
        Method::Auto => {
            if rows.min(cols) <= EXACT_MAX_DIM.max(2 * block_size(settings)) {
                Method::Exact
            } else {
                Method::Randomized
            }
        }
        m => m,
    }
}

fn run_job(
    files: &[Option<OpenShard>],
    job: &Job,
    settings: &Settings,
    threads: usize,
    cancel: &AtomicBool,
) -> Result<Spectrum> {
    let shard_of = |i: usize| files[i].as_ref().expect("shards of jobs are open");
    for s in &job.segments {
        shard_of(s.shard).check_unchanged(&job.name)?;
    }
    let segments = job
        .segments
        .iter()
        .map(|s| {
            let f = shard_of(s.shard);
            Segment {
                file: &f.file,
                path: &f.path,
                offset: s.offset,
                rows: s.rows,
            }
        })
        .collect();
    let src = MatrixSource::new(segments, job.cols, job.dtype);
    let (rows, cols) = (src.rows(), job.cols);
    let method = resolve_method(settings, rows, cols);
    let cfg = SolverConfig {
        top_k: settings.top_k,
        block: block_size(settings),
        rtol: settings.rtol,
        max_iter: settings.max_iter,
        seed: job_seed(settings.seed, &job.name),
        chunks: threads,
        panel_elems: PANEL_ELEMENTS,
        par: if threads > 1 {
            Par::rayon(threads)
        } else {
            Par::Seq
        },
    };
    let outcome = if rows == 0 || cols == 0 {
        Outcome {
            sv: Vec::new(),
            stats: Default::default(),
            iterations: 0,
            converged: true,
            full: true,
        }
    } else if method == Method::Exact {
        solver::exact(&src, &cfg, cancel)?
    } else {
        solver::randomized(&src, &cfg, cancel)?
    };
    for s in &job.segments {
        shard_of(s.shard).check_unchanged(&job.name)?;
    }
    Ok(summarize(outcome, settings.top_k, rows.min(cols), method))
}

/// Turn a solver outcome into the reported statistics.
fn summarize(o: Outcome, top_k: usize, n_total: usize, method: Method) -> Spectrum {
    let k = top_k.min(o.sv.len());
    let top: Vec<f64> = o.sv[..k].to_vec();
    if o.stats.nonfinite > 0 {
        return Spectrum {
            singular_values: vec![f64::NAN; k],
            frobenius_norm: f64::NAN,
            spectral_norm: f64::NAN,
            stable_rank: f64::NAN,
            energy_ranks: [0; 3],
            energy_rank_exact: false,
            alpha: f64::NAN,
            nonfinite: o.stats.nonfinite,
            method,
            iterations: o.iterations,
            converged: false,
        };
    }
    let frob_sq = o.stats.sum_sq;
    let sigma1 = top.first().copied().unwrap_or(0.0);
    let (energy_ranks, energy_rank_exact) = if o.full {
        stats::energy_ranks(&o.sv, frob_sq, n_total)
    } else {
        stats::energy_ranks(&top, frob_sq, n_total)
    };
    Spectrum {
        frobenius_norm: frob_sq.sqrt(),
        spectral_norm: sigma1,
        stable_rank: stats::stable_rank(frob_sq, sigma1),
        energy_ranks,
        energy_rank_exact: energy_rank_exact || o.full,
        alpha: stats::hill_alpha(&top),
        nonfinite: 0,
        method,
        iterations: o.iterations,
        converged: o.converged,
        singular_values: top,
    }
}

/// Spectra of every job, in order, on the current rayon pool. Checks each shard's size
/// against its header first and its (size, mtime) before and after every matrix
/// ([`Error::Changed`]); stops with [`Error::Interrupted`] soon after `cancel` is set.
pub fn compute(
    shards: &[ShardFile],
    jobs: &[Job],
    settings: &Settings,
    cancel: &AtomicBool,
    progress: &Progress,
) -> Result<Vec<Spectrum>> {
    for job in jobs {
        validate(shards, job)?;
    }
    let mut used = vec![false; shards.len()];
    for s in jobs.iter().flat_map(|j| &j.segments) {
        used[s.shard] = true;
    }
    let files: Vec<Option<OpenShard>> = shards
        .iter()
        .zip(&used)
        .map(|(s, &u)| u.then(|| OpenShard::open(s)).transpose())
        .collect::<Result<_>>()?;
    let threads = rayon::current_num_threads();
    // Parallelism comes from our own panel groups and job batches; faer's small dense kernels
    // (QR of a block, Rayleigh–Ritz) run sequentially inside them instead of contending.
    faer::set_global_parallelism(Par::Seq);
    let advise = |job: &Job, advice: libc::c_int| {
        let esize = job.dtype.byte_size().unwrap_or(1);
        for s in &job.segments {
            if let Some(f) = &files[s.shard] {
                f.advise(s.offset, (s.rows * job.cols * esize) as u64, advice);
            }
        }
    };
    let is_large = |j: &Job| j.rows() * j.cols >= LARGE_ELEMENTS;
    let mut out: Vec<Option<Spectrum>> = vec![None; jobs.len()];
    let mut i = 0;
    while i < jobs.len() {
        if is_large(&jobs[i]) {
            if let Some(next) = jobs.get(i + 1) {
                advise(next, libc::POSIX_FADV_WILLNEED);
            }
            out[i] = Some(run_job(&files, &jobs[i], settings, threads, cancel)?);
            advise(&jobs[i], libc::POSIX_FADV_DONTNEED);
            progress.finish(i);
            i += 1;
            continue;
        }
        // A run of small matrices: in parallel with each other, each single-threaded.
        let mut end = i;
        while end < jobs.len() && !is_large(&jobs[end]) {
            end += 1;
        }
        let results: Vec<Result<Spectrum>> = (i..end)
            .into_par_iter()
            .map(|j| {
                let r = run_job(&files, &jobs[j], settings, 1, cancel);
                if r.is_ok() {
                    advise(&jobs[j], libc::POSIX_FADV_DONTNEED);
                    progress.finish(j);
                }
                r
            })
            .collect();
        for (j, r) in (i..end).zip(results) {
            out[j] = Some(r?);
        }
        i = end;
    }
    Ok(out.into_iter().map(|s| s.expect("every job ran")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;
    use std::io::Write;

    /// A `rows × cols` matrix U·diag(s)·Vᵀ with random orthonormal U, V (row-major values).
    fn with_spectrum(rows: usize, cols: usize, s: &[f64], seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut gauss = |r: usize, c: usize| {
            Mat::<f64>::from_fn(r, c, |_, _| {
                // Irwin–Hall approximation is enough for random rotations.
                (0..12)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        (state >> 11) as f64 / (1u64 << 53) as f64
                    })
                    .sum::<f64>()
                    - 6.0
            })
        };
        let k = s.len();
        let u = gauss(rows, k).qr().compute_thin_Q();
        let v = gauss(cols, k).qr().compute_thin_Q();
        let d = Mat::<f64>::from_fn(k, k, |i, j| if i == j { s[i] } else { 0.0 });
        let a = &u * &d * v.transpose();
        (0..rows)
            .flat_map(|i| (0..cols).map(move |j| (i, j)))
            .map(|(i, j)| a[(i, j)] as f32)
            .collect()
    }

    fn write(vals: &[f32], prefix: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0u8; prefix]).unwrap();
        for v in vals {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
        f.flush().unwrap();
        f
    }

    fn run(
        file: &tempfile::NamedTempFile,
        jobs: &[Job],
        settings: &Settings,
    ) -> Result<Vec<Spectrum>> {
        let shards = [ShardFile {
            path: file.path().to_path_buf(),
            expected_len: file.as_file().metadata().unwrap().len(),
        }];
        compute(
            &shards,
            jobs,
            settings,
            &AtomicBool::new(false),
            &Progress::default(),
        )
    }

    fn job(name: &str, offset: u64, rows: usize, cols: usize) -> Job {
        Job {
            name: name.into(),
            segments: vec![SegmentSpec {
                shard: 0,
                offset,
                rows,
            }],
            cols,
            dtype: Dtype::F32,
        }
    }

    fn max_rel_err(got: &[f64], want: &[f64]) -> f64 {
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs() / w)
            .fold(0.0, f64::max)
    }

    #[test]
    fn randomized_and_exact_recover_known_spectra() {
        // Power-law decay and a flat top (a cluster of near-equal values), 600 × 700.
        let (m, n) = (600, 700);
        let decay: Vec<f64> = (1..=120).map(|i| 10.0 * (i as f64).powf(-0.6)).collect();
        let cluster: Vec<f64> = (0..120)
            .map(|i| {
                if i < 40 {
                    5.0 - 0.01 * i as f64
                } else {
                    2.0 / (1.0 + 0.05 * i as f64)
                }
            })
            .collect();
        for (tag, s) in [("decay", decay), ("cluster", cluster)] {
            let file = write(&with_spectrum(m, n, &s, 7), 16);
            let jobs = [job(tag, 16, m, n)];
            for method in [Method::Randomized, Method::Exact] {
                let settings = Settings {
                    method,
                    ..Settings::default()
                };
                let sp = &run(&file, &jobs, &settings).unwrap()[0];
                assert_eq!(sp.method, method);
                let err = max_rel_err(&sp.singular_values, &s[..32]);
                let tol = if method == Method::Exact { 1e-5 } else { 1e-2 };
                assert!(err < tol, "{tag} {method:?}: max rel err {err}");
                assert!((sp.singular_values[0] / s[0] - 1.0).abs() < 5e-3);
                let frob: f64 = s.iter().map(|x| x * x).sum::<f64>().sqrt();
                assert!((sp.frobenius_norm / frob - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn wide_exact_and_stacked_segments() {
        // A 40 × 90 matrix stored as two row segments at different offsets.
        let s: Vec<f64> = (0..40).map(|i| 3.0 / (1.0 + i as f64)).collect();
        let vals = with_spectrum(40, 90, &s, 3);
        let mut raw = vals[..15 * 90].to_vec();
        raw.extend(std::iter::repeat_n(0.0, 5)); // gap between the segments
        raw.extend_from_slice(&vals[15 * 90..]);
        let file = write(&raw, 8);
        let j = Job {
            name: "stack".into(),
            segments: vec![
                SegmentSpec {
                    shard: 0,
                    offset: 8,
                    rows: 15,
                },
                SegmentSpec {
                    shard: 0,
                    offset: 8 + (15 * 90 + 5) * 4,
                    rows: 25,
                },
            ],
            cols: 90,
            dtype: Dtype::F32,
        };
        let sp = &run(&file, &[j], &Settings::default()).unwrap()[0];
        assert_eq!(sp.method, Method::Exact);
        assert!(max_rel_err(&sp.singular_values, &s[..32]) < 1e-5);
        assert!(sp.energy_rank_exact);
    }

    #[test]
    fn nonfinite_values_give_nan_statistics() {
        let mut vals = with_spectrum(64, 48, &[1.0, 0.5, 0.25], 1);
        vals[100] = f32::NAN;
        vals[200] = f32::INFINITY;
        let file = write(&vals, 0);
        for method in [Method::Randomized, Method::Exact] {
            let settings = Settings {
                method,
                ..Settings::default()
            };
            let sp = &run(&file, &[job("nan", 0, 64, 48)], &settings).unwrap()[0];
            assert_eq!(sp.nonfinite, 2);
            assert!(sp.spectral_norm.is_nan() && sp.stable_rank.is_nan());
            assert!(sp.singular_values.iter().all(|v| v.is_nan()));
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let s: Vec<f64> = (1..=100).map(|i| 1.0 / (i as f64).sqrt()).collect();
        let file = write(&with_spectrum(300, 260, &s, 5), 0);
        let jobs = [job("w", 0, 300, 260)];
        let settings = Settings {
            method: Method::Randomized,
            seed: 3,
            ..Settings::default()
        };
        let a = run(&file, &jobs, &settings).unwrap();
        let b = run(&file, &jobs, &settings).unwrap();
        assert_eq!(a[0].singular_values, b[0].singular_values);
        let c = run(
            &file,
            &jobs,
            &Settings {
                seed: 4,
                ..settings
            },
        )
        .unwrap();
        assert_ne!(a[0].singular_values, c[0].singular_values);
    }

    #[test]
    fn changed_file_and_bad_dtype_are_errors() {
        let file = write(&[1.0; 64], 0);
        let shards = [ShardFile {
            path: file.path().to_path_buf(),
            expected_len: 300,
        }];
        let err = compute(
            &shards,
            &[job("w", 0, 8, 8)],
            &Settings::default(),
            &AtomicBool::new(false),
            &Progress::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Changed { .. }), "{err}");
        let mut j = job("ints", 0, 8, 8);
        j.dtype = Dtype::I32;
        let err = run(&file, &[j], &Settings::default()).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }));
        assert!(err.to_string().contains("\"ints\""), "{err}");
        let cancelled = AtomicBool::new(true);
        let shards = [ShardFile {
            path: file.path().to_path_buf(),
            expected_len: 256,
        }];
        let err = compute(
            &shards,
            &[job("w", 0, 8, 8)],
            &Settings::default(),
            &cancelled,
            &Progress::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Interrupted));
    }
}
