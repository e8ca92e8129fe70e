//! The run directory's contract: which files a run leaves in `<out>/<name>/`, what their rows
//! hold, and how a run's status is told. Everything that writes or reads a run directory (the
//! trainer, sweeps, tables, plots, eval) goes through here.
//!
//!   spec.toml               the resolved spec
//!   metrics.csv             one `EpochRow` per epoch (or the partial epoch a step budget ends in)
//!   summary.csv             one `Summary` row
//!   lambda.csv              `LambdaRow`s (docs/SPEC.md §5)
//!   grad_norm.csv           `GradNormRow`s
//!   checkpoint.safetensors  what resuming needs (`train::resume`)
//!   best.safetensors        the model at the best validation loss
//!   best.previous.safetensors  the best before a step budget's last evaluation (kept only
//!                           while that evaluation may be undone by a larger budget)
//!   run.log                 a sweep's record of the run's output
//!   .lock                   held by the process training the run (who holds it, inside)

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bail;
use crate::error::{Result, io_err};
use crate::io::{read_csv_file, write_atomic, write_csv};
use crate::names::named_enum;
use crate::nn::{CellKind, Normalization, Quantizer, Stats};
use crate::spec::{Spec, Task};

named_enum! {
    /// How a run ended (or stands).
    pub enum Status {
        Ok = "ok",
        Diverged = "diverged",
        Interrupted = "interrupted",
    }
}

impl Status {
    /// ok and diverged are results (the paper prints N/A for a diverged cell); an interrupted
    /// run is to be resumed.
    pub fn is_result(self) -> bool {
        matches!(self, Status::Ok | Status::Diverged)
    }
}

named_enum! {
    /// The figure the paper reports for a task, computed from the evaluation statistics.
    pub enum Metric {
        /// Bits per character: nats / ln 2 (char and byte tasks).
        Bpc = "bpc",
        /// Perplexity: exp(nats) (word task).
        Ppl = "ppl",
        /// 100 × misclassified / total (MNIST).
        ErrorPct = "error_pct",
    }
}

impl Metric {
    pub fn for_task(task: Task) -> Metric {
        match task {
            Task::PtbWord => Metric::Ppl,
            Task::SeqMnist | Task::Pmnist => Metric::ErrorPct,
            Task::PtbChar | Task::Warpeace | Task::Text8 => Metric::Bpc,
        }
    }

    pub fn value(self, s: &Stats) -> f64 {
        match self {
            Metric::Bpc => s.mean_loss() / std::f64::consts::LN_2,
            Metric::Ppl => s.mean_loss().exp(),
            Metric::ErrorPct => 100.0 * (1.0 - s.correct as f64 / s.count.max(1) as f64),
        }
    }
}

/// One row of metrics.csv: an epoch (or the partial epoch a step budget ended in).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochRow {
    pub epoch: usize,
    pub step: u64,
    /// lr of the latent weights during this epoch (the one the schedules move).
    pub lr: f64,
    pub train_loss: f64,
    pub valid_loss: f64,
    pub valid_metric: f64,
    pub test_loss: f64,
    pub test_metric: f64,
    pub tokens_per_s: f64,
    pub wall_s: f64,
}

/// The one row of summary.csv.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub name: String,
    pub task: Task,
    pub layers: usize,
    pub hidden: usize,
    pub quantizer: Quantizer,
    pub normalization: Normalization,
    pub epochs_run: usize,
    pub steps: u64,
    pub best_epoch: usize,
    pub metric: Metric,
    pub valid_metric: f64,
    pub test_metric: f64,
    pub test_loss_nats: f64,
    pub size_kb: u64,
    pub train_tokens_per_s: f64,
    pub wall_s: f64,
    pub status: Status,
    /// The optimizer step at which a diverged run stopped.
    pub diverged_step: Option<u64>,
    /// The recurrent cell (summaries written before the GRU have no such column: LSTM).
    #[serde(default)]
    pub cell: CellKind,
}

/// One row of lambda.csv: per layer, λ1 and what it is made of. LSTM rows (docs/SPEC.md §5):
/// λ2, γ1 and per gate k ∈ {i, f, a, o} the spectral norm of the recurrent block, the
/// normalizer's gain and divisor. GRU rows (§6): ζ, γ_z, γ_u and the same per gate k ∈
/// {r, z, n}. A cell's columns are empty in the other's rows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LambdaRow {
    pub step: u64,
    pub epoch: usize,
    pub layer: usize,
    pub lambda1: f64,
    pub lambda2: Option<f64>,
    pub gamma1: Option<f64>,
    pub norm_i: Option<f64>,
    pub g_i: Option<f64>,
    pub sigma_i: Option<f64>,
    pub norm_f: Option<f64>,
    pub g_f: Option<f64>,
    pub sigma_f: Option<f64>,
    pub norm_a: Option<f64>,
    pub g_a: Option<f64>,
    pub sigma_a: Option<f64>,
    pub norm_o: Option<f64>,
    pub g_o: Option<f64>,
    pub sigma_o: Option<f64>,
    /// The cell (files written before the GRU have no such column: LSTM).
    #[serde(default)]
    pub cell: CellKind,
    #[serde(default)]
    pub zeta: Option<f64>,
    #[serde(default)]
    pub gamma_z: Option<f64>,
    #[serde(default)]
    pub gamma_u: Option<f64>,
    #[serde(default)]
    pub norm_r: Option<f64>,
    #[serde(default)]
    pub g_r: Option<f64>,
    #[serde(default)]
    pub sigma_r: Option<f64>,
    #[serde(default)]
    pub norm_z: Option<f64>,
    #[serde(default)]
    pub g_z: Option<f64>,
    #[serde(default)]
    pub sigma_z: Option<f64>,
    #[serde(default)]
    pub norm_n: Option<f64>,
    #[serde(default)]
    pub g_n: Option<f64>,
    #[serde(default)]
    pub sigma_n: Option<f64>,
}

/// One row of grad_norm.csv: ‖∂ξ/∂h_t‖ over the batch at step t of the window trained at `step`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GradNormRow {
    pub step: u64,
    pub epoch: usize,
    pub layer: usize,
    pub t: usize,
    pub grad_norm: f64,
}

/// The status column alone, so that a summary written by another version still tells it.
#[derive(Deserialize)]
struct StatusOnly {
    status: Status,
}

/// The hold `RunDir::lock` takes; released when dropped (or when the process ends).
pub struct RunLock {
    _file: File,
}

/// A run directory, `<out>/<name>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub const SPEC: &'static str = "spec.toml";
    pub const METRICS: &'static str = "metrics.csv";
    pub const SUMMARY: &'static str = "summary.csv";
    pub const LAMBDA: &'static str = "lambda.csv";
    pub const GRAD_NORM: &'static str = "grad_norm.csv";
    pub const CHECKPOINT: &'static str = "checkpoint.safetensors";
    pub const BEST: &'static str = "best.safetensors";
    pub const BEST_PREVIOUS: &'static str = "best.previous.safetensors";
    pub const LOG: &'static str = "run.log";
    pub const LOCK: &'static str = ".lock";

    /// The directory of run `name` under the output root.
    pub fn new(out_root: &Path, name: &str) -> RunDir {
        RunDir { path: out_root.join(name) }
    }

    pub fn at(path: &Path) -> RunDir {
        RunDir { path: path.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's name (the run's name).
    pub fn name(&self) -> String {
        self.path.file_name().map_or_else(|| self.path.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.file(Self::CHECKPOINT)
    }

    pub fn best(&self) -> PathBuf {
        self.file(Self::BEST)
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| io_err(&self.path, e))
    }

    /// Who holds the directory (`lock`), if a live process does.
    pub fn holder(&self) -> Option<String> {
        let mut file = File::open(self.file(Self::LOCK)).ok()?;
        match file.try_lock() {
            Ok(()) => None,
            Err(_) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Some(holder.trim().to_string())
            }
        }
    }

    /// The optimizer step the run's checkpoint was written at (0 without one).
    pub fn checkpoint_step(&self) -> u64 {
        crate::io::checkpoint::read_meta(&self.checkpoint()).ok().and_then(|m| m.get("step")?.parse().ok()).unwrap_or(0)
    }

    /// A run starting afresh must not leave an older run's checkpoints to be resumed from, nor
    /// its summary to be read as this run's.
    pub fn clear_for_fresh_run(&self) {
        for f in [Self::CHECKPOINT, Self::BEST, Self::BEST_PREVIOUS, Self::SUMMARY] {
            let _ = std::fs::remove_file(self.file(f));
        }
    }

    /// Hold the directory for this process: a second run of the same name and output root
    /// fails at once, saying who holds it. The operating system releases the hold when the
    /// process ends, however it ends, so a killed run never leaves a stale lock behind.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.file(Self::LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        match file.try_lock() {
            Ok(()) => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                let since =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let holder = format!("pid {} on {} since unix time {since}\n", std::process::id(), host.trim());
                file.set_len(0)
                    .and_then(|_| file.rewind())
                    .and_then(|_| file.write_all(holder.as_bytes()))
                    .map_err(|e| io_err(&path, e))?;
                Ok(RunLock { _file: file })
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "{}: another qlstm run is training into this directory ({}); wait for it to end, or give this run another name (--set name=…) or --out",
                    self.path.display(),
                    holder.trim()
                )
            }
            Err(TryLockError::Error(e)) => Err(io_err(&path, e)),
        }
    }

    /// Holds a spec and a summary: a run that got as far as writing its results.
    pub fn has_results(&self) -> bool {
        self.file(Self::SUMMARY).exists() && self.file(Self::SPEC).exists()
    }

    pub fn write_spec(&self, spec: &Spec) -> Result<()> {
        write_atomic(&self.file(Self::SPEC), spec.to_toml().as_bytes())
    }

    pub fn read_spec(&self) -> Result<Spec> {
        Spec::load(&self.file(Self::SPEC), &[])
    }

    pub fn write_metrics(&self, rows: &[EpochRow]) -> Result<()> {
        write_csv(&self.file(Self::METRICS), rows)
    }

    pub fn read_metrics(&self) -> Result<Vec<EpochRow>> {
        read_csv_file(&self.file(Self::METRICS))
    }

    pub fn write_summary(&self, s: &Summary) -> Result<()> {
        write_csv(&self.file(Self::SUMMARY), std::slice::from_ref(s))
    }

    /// The summary row, if the run wrote one.
    pub fn read_summary(&self) -> Result<Option<Summary>> {
        Ok(read_csv_file::<Summary>(&self.file(Self::SUMMARY))?.into_iter().next())
    }

    /// The status in summary.csv, if the run got that far (an unreadable one counts as absent).
    pub fn status(&self) -> Option<Status> {
        read_csv_file::<StatusOnly>(&self.file(Self::SUMMARY)).ok()?.into_iter().next().map(|s| s.status)
    }

    /// Done: its summary says ok or diverged (both are results).
    pub fn is_complete(&self) -> bool {
        self.status().is_some_and(Status::is_result)
    }

    pub fn write_diagnostics(&self, lambda: &[LambdaRow], grads: &[GradNormRow]) -> Result<()> {
        write_csv(&self.file(Self::LAMBDA), lambda)?;
        write_csv(&self.file(Self::GRAD_NORM), grads)
    }

    pub fn read_lambda(&self) -> Result<Vec<LambdaRow>> {
        read_csv_file(&self.file(Self::LAMBDA))
    }

    pub fn read_grad_norms(&self) -> Result<Vec<GradNormRow>> {
        read_csv_file(&self.file(Self::GRAD_NORM))
    }
}
