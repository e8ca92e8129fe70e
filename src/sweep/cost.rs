//! What a run costs, estimated before it runs: its steps, the threads its shapes use well, and
//! its CPU time — for cluster requests (`--time`, `--cpus-per-task`) and for `sweep --status`'s
//! estimate of the time to go.
//!
//! The model counts FLOPs as `qlstm bench` does (3 × the forward's multiply-adds × 2 for a
//! training step; the forward alone for evaluation) and divides by a per-thread rate set well
//! below what was measured: `qlstm bench` at fp/none, 2 threads, on this project's 2-core
//! EPYC (same-run SGEMM roof 185–480 GFLOP/s) reached 87 (mnist) to 318 (char) GFLOP/s, and
//! normalized cells run at 0.6–1.0 of that, so 25 GFLOP/s per thread leaves a factor of about
//! 2–6 of headroom, before the safety factor a time limit adds.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::TaskData;
use crate::error::Result;
use crate::spec::{Spec, Task};

/// Sustained GFLOP/s per thread the estimates assume (see the module's comment).
pub const GFLOPS_PER_THREAD: f64 = 25.0;

/// Training FLOPs of one step of `spec` (a full window of `batch_size × bptt` tokens), counted as
/// the benchmark counts them: per token 2·Σ_l (in_l + H)·G·H for the layers (G gate blocks:
/// LSTM 4, GRU 3), per prediction 2·H·V for the softmax layer, × 3 for forward and backward.
pub fn train_step_flops(spec: &Spec, vocab: usize) -> f64 {
    3.0 * forward_flops(spec, vocab, spec.train.batch_size)
}

/// Forward FLOPs of one window of `batch` streams.
fn forward_flops(spec: &Spec, vocab: usize, batch: usize) -> f64 {
    let m = &spec.model;
    let h = m.hidden as f64;
    let input = spec.input_size(vocab) as f64;
    let g = (m.cell.gates() as f64) * h;
    let per_token: f64 = (0..m.layers).map(|l| 2.0 * (if l == 0 { input } else { h } + h) * g).sum();
    let config = spec.model_config(vocab);
    let tokens = (batch * spec.train.bptt) as f64;
    let predictions = if spec.task.is_mnist() { batch as f64 } else { tokens };
    per_token * tokens + 2.0 * h * config.outputs as f64 * predictions
}

/// What a task's data gives the cost model: the vocabulary, the training windows of an epoch,
/// and the evaluation windows (valid and test) of an epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DataCounts {
    pub vocab: usize,
    pub windows_per_epoch: usize,
    pub eval_windows_per_epoch: usize,
}

/// Counts by (task, data directory, batch sizes, bptt): the data is loaded once per kind.
pub struct CountCache {
    known: HashMap<(Task, PathBuf, usize, usize, usize), DataCounts>,
}

impl DataCounts {
    pub fn cache() -> CountCache {
        CountCache { known: HashMap::new() }
    }

    /// From the data if it is there; from the task's standard splits otherwise (the counts of
    /// the files `scripts/get_data.sh` fetches).
    fn of(spec: &Spec) -> DataCounts {
        let t = &spec.train;
        let (vocab, train, valid, test) = match TaskData::load(spec) {
            Ok(TaskData::Lm(c)) => (c.vocab(), c.train.len(), c.valid.len(), c.test.len()),
            Ok(TaskData::Mnist(m, _)) => (10, m.train.len(), m.valid.len(), m.test.len()),
            Err(_) => {
                let (train, valid, test) = match spec.task {
                    Task::PtbChar => (5_017_482, 393_042, 442_423),
                    Task::PtbWord => (929_589, 73_760, 82_430),
                    Task::Warpeace => (2_556_982, 319_622, 319_624),
                    Task::Text8 => (90_000_000, 5_000_000, 5_000_000),
                    Task::SeqMnist | Task::Pmnist => (50_000, 10_000, 10_000),
                };
                (spec.task.standard_vocab(), train, valid, test)
            }
        };
        let lm_windows = |tokens: usize, batch: usize| (tokens / batch).saturating_sub(1).div_ceil(t.bptt);
        if spec.task.is_mnist() {
            DataCounts {
                vocab,
                windows_per_epoch: train.div_ceil(t.batch_size),
                eval_windows_per_epoch: valid.div_ceil(t.eval_batch_size) + test.div_ceil(t.eval_batch_size),
            }
        } else {
            DataCounts {
                vocab,
                windows_per_epoch: lm_windows(train, t.batch_size),
                eval_windows_per_epoch: lm_windows(valid, t.eval_batch_size) + lm_windows(test, t.eval_batch_size),
            }
        }
    }
}

impl CountCache {
    pub fn get(&mut self, spec: &Spec) -> Result<DataCounts> {
        let t = &spec.train;
        let key = (spec.task, PathBuf::from(&spec.data.dir), t.batch_size, t.eval_batch_size, t.bptt);
        Ok(*self.known.entry(key).or_insert_with(|| DataCounts::of(spec)))
    }
}

/// A run's estimated needs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Optimizer steps of the whole budget.
    pub steps: u64,
    pub epochs: usize,
    /// Threads its per-step products use well.
    pub threads: usize,
    /// CPU seconds of one training step, and of one epoch's evaluation (valid and test).
    pub cpu_s_per_step: f64,
    pub cpu_s_per_eval: f64,
}

impl Plan {
    pub fn of(spec: &Spec, c: DataCounts) -> Plan {
        let t = &spec.train;
        let all = (c.windows_per_epoch * t.epochs) as u64;
        let steps = if t.max_steps > 0 { all.min(t.max_steps as u64) } else { all };
        let epochs = steps.div_ceil(c.windows_per_epoch.max(1) as u64) as usize;
        let rate = GFLOPS_PER_THREAD * 1e9;
        // The recurrent product of one step, batch × H × 4H multiply-adds, decides whether a
        // second thread pays (below 2^24 it costs more in synchronisation than it saves).
        let macs = t.batch_size * spec.model.hidden * spec.model.cell.gates() * spec.model.hidden;
        let threads = match macs {
            0..0x100_0000 => 1,
            0x100_0000..0x800_0000 => 2,
            _ => 4,
        };
        Plan {
            steps,
            epochs,
            threads,
            cpu_s_per_step: train_step_flops(spec, c.vocab) / rate,
            cpu_s_per_eval: c.eval_windows_per_epoch as f64 * forward_flops(spec, c.vocab, t.eval_batch_size) / rate,
        }
    }

    /// CPU seconds of the steps from `done` to the end, with the evaluations still to come.
    pub fn cpu_seconds_left(&self, done: u64) -> f64 {
        let left = self.steps.saturating_sub(done);
        let per_epoch = self.steps as f64 / self.epochs.max(1) as f64;
        let evals = (left as f64 / per_epoch.max(1.0)).ceil();
        left as f64 * self.cpu_s_per_step + evals * self.cpu_s_per_eval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_as_the_benchmark_counts_them() {
        // char: per token 2·(50 + 512)·2048 + 2·512·50, × 3, × 64·100 tokens
        let s = Spec::defaults(Task::PtbChar);
        let want = 3.0 * (2.0 * 562.0 * 2048.0 + 2.0 * 512.0 * 50.0) * 6400.0;
        assert_eq!(train_step_flops(&s, 50), want);
        // mnist predicts once per sequence
        let s = Spec::defaults(Task::SeqMnist);
        let want = 3.0 * (2.0 * 101.0 * 400.0 * 78400.0 + 2.0 * 100.0 * 10.0 * 100.0);
        assert_eq!(train_step_flops(&s, 10), want);
    }

    #[test]
    fn plans_count_the_budget_and_what_is_left() {
        let mut s = Spec::defaults(Task::PtbChar);
        s.train.epochs = 3;
        let c = DataCounts { vocab: 50, windows_per_epoch: 784, eval_windows_per_epoch: 130 };
        let p = Plan::of(&s, c);
        assert_eq!((p.steps, p.epochs, p.threads), (2352, 3, 2));
        s.train.max_steps = 1000;
        let p = Plan::of(&s, c);
        assert_eq!((p.steps, p.epochs), (1000, 2));
        assert_eq!(p.cpu_seconds_left(1000), 0.0);
        let half = p.cpu_seconds_left(500);
        assert!((half - (500.0 * p.cpu_s_per_step + p.cpu_s_per_eval)).abs() < 1e-9);
        s.model.hidden = 64;
        assert_eq!(Plan::of(&s, c).threads, 1);
    }
}
