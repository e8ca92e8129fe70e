//! What a training run tells whoever watches it. The trainer prints nothing itself: the command
//! line's progress display (`cmd::progress`) implements this, tests use `Silent`.

use std::path::Path;

use crate::run_dir::{EpochRow, Metric};
use crate::train::Split;
use crate::train::resume::RunState;

pub trait Observer {
    /// A run continues from a checkpoint.
    fn resumed(&mut self, _name: &str, _checkpoint: &Path, _state: &RunState) {}
    /// Epoch `epoch` of `epochs` starts (or continues) with `windows` windows, `done` of them
    /// already trained; the run stops at `step_budget` steps (None: no step budget).
    fn epoch_started(
        &mut self,
        _epoch: usize,
        _epochs: usize,
        _windows: usize,
        _done: usize,
        _step_budget: Option<u64>,
    ) {
    }
    /// A window has been trained; `state` holds the epoch's statistics so far.
    fn window_trained(&mut self, _state: &RunState) {}
    /// The epoch's training part is over (finished, stopped or diverged).
    fn epoch_trained(&mut self) {}
    /// Evaluation of `split`: `done` of `total` windows (or image batches) so far.
    fn evaluating(&mut self, _split: Split, _done: usize, _total: usize) {}
    /// The epoch has been evaluated.
    fn epoch_evaluated(&mut self, _name: &str, _row: &EpochRow, _metric: Metric) {}
    /// The run diverged at `step` (the number of updates made before the failing window).
    fn diverged(&mut self, _name: &str, _step: u64, _why: Divergence) {}
}

/// Why a run stopped as diverged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Divergence {
    /// The window's mean training loss (nats) was not finite, or above the ceiling
    /// (`train.max_loss`, default 3 ln V).
    Loss { mean_loss: f64, ceiling: f64 },
    /// The loss was finite but its gradient was not: backpropagation through the window
    /// overflowed f32 (the exploding gradients of docs/SPEC.md §5, e.g. plain bc at H = 512).
    Gradient { mean_loss: f64 },
}

/// Watches nothing.
pub struct Silent;

impl Observer for Silent {}
