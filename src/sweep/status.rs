//! Where a sweep stands: every run of its manifest (`<out>/sweep.toml`, written whenever the
//! sweep is run or emitted) with its state, steps done of its budget and best metric so far,
//! and the CPU time still to go by the cost model.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bail;
use crate::error::{Error, Result, io_err};
use crate::io::write_atomic;
use crate::names::named_enum;
use crate::run_dir::{Metric, RunDir, Status};
use crate::sweep::Job;
use crate::sweep::cost::Plan;

/// The manifest's file name under the sweep's output directory.
pub const MANIFEST: &str = "sweep.toml";

/// The runs of a sweep and their plans, as the last `qlstm sweep` over this directory saw them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub run: Vec<ManifestRun>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestRun {
    pub name: String,
    pub plan: Plan,
}

impl Manifest {
    /// Record `jobs`, keeping runs of earlier sweeps into the same directory that these do not
    /// name (a directory can collect several sweeps).
    pub fn record(out: &Path, jobs: &[Job]) -> Result<()> {
        let mut m = Manifest::read(out).unwrap_or_default();
        for j in jobs {
            let entry = ManifestRun { name: j.name.clone(), plan: j.plan };
            match m.run.iter_mut().find(|r| r.name == j.name) {
                Some(r) => *r = entry,
                None => m.run.push(entry),
            }
        }
        let text = toml::to_string(&m).map_err(|e| Error::new(format!("{MANIFEST}: {e}")))?;
        write_atomic(&out.join(MANIFEST), text.as_bytes())
    }

    pub fn read(out: &Path) -> Result<Manifest> {
        let path = out.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        toml::from_str(&text).map_err(|e| Error::new(format!("{}: {e}", path.display())))
    }
}

named_enum! {
    /// Where one run stands.
    pub enum State {
        /// Finished with its budget.
        Ok = "ok",
        /// Stopped by a diverging loss: a result too.
        Diverged = "diverged",
        /// Stopped (a signal, a time limit, a kill) or finished with a smaller budget than the
        /// sweep's: the next run of the sweep resumes it.
        Interrupted = "interrupted",
        /// A live process holds its directory.
        Running = "running",
        /// Not started.
        Pending = "pending",
    }
}

impl State {
    pub fn is_done(self) -> bool {
        matches!(self, State::Ok | State::Diverged)
    }
}

/// One line of `qlstm sweep --status`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStatus {
    pub name: String,
    pub state: State,
    pub steps_done: u64,
    pub steps_total: u64,
    /// The best validation metric so far, and the epoch it came at.
    pub best: Option<(Metric, f64, usize)>,
    /// The process holding the run (running only).
    pub holder: Option<String>,
    /// CPU seconds still to go by the cost model (0 when done).
    pub cpu_s_left: f64,
}

/// Every run of the sweep in `out`, in the manifest's order.
pub fn status(out: &Path) -> Result<Vec<RunStatus>> {
    if !out.is_dir() {
        bail!("{}: not a sweep's output directory", out.display());
    }
    let m = Manifest::read(out).map_err(|e| {
        Error::new(format!("{e}; `qlstm sweep --status` reads the manifest a `qlstm sweep … --out DIR` writes"))
    })?;
    Ok(m.run.iter().map(|r| one(&RunDir::new(out, &r.name), r)).collect())
}

fn one(dir: &RunDir, r: &ManifestRun) -> RunStatus {
    let summary = dir.read_summary().ok().flatten();
    let holder = dir.holder();
    let checkpoint = dir.checkpoint_step();
    let steps_done = checkpoint.max(summary.as_ref().map_or(0, |s| s.steps));
    let state = match (&holder, summary.as_ref().map(|s| s.status)) {
        (Some(_), _) => State::Running,
        (None, Some(Status::Diverged)) => State::Diverged,
        (None, Some(Status::Ok)) if steps_done >= r.plan.steps => State::Ok,
        (None, Some(_)) => State::Interrupted,
        (None, None) if dir.checkpoint().exists() => State::Interrupted,
        (None, None) => State::Pending,
    };
    let best = dir.read_metrics().ok().and_then(|rows| {
        let metric =
            summary.as_ref().map(|s| s.metric).or_else(|| dir.read_spec().ok().map(|s| Metric::for_task(s.task)))?;
        let b =
            rows.iter().filter(|x| x.valid_loss.is_finite()).min_by(|a, b| a.valid_loss.total_cmp(&b.valid_loss))?;
        Some((metric, b.valid_metric, b.epoch))
    });
    let cpu_s_left = if state.is_done() { 0.0 } else { r.plan.cpu_seconds_left(steps_done) };
    RunStatus { name: r.name.clone(), state, steps_done, steps_total: r.plan.steps, best, holder, cpu_s_left }
}
