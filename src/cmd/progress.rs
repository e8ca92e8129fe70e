//! What `qlstm run` and `qlstm eval` show while they work, on stderr: on a terminal a progress
//! bar toward the real goal (the epoch's end or the step budget, whichever comes first); without
//! one (a log file, a cluster job) a plain line every 10 seconds — steps done of the run's
//! total, loss, speed, time to go. `QLSTM_PROGRESS_SECS` sets that interval. Evaluated epochs,
//! resumes and divergence get one line each (epochs on stdout, with their units).

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::run_dir::{EpochRow, Metric};
use crate::train::resume::RunState;
use crate::train::{Divergence, Observer, Split};

/// Seconds between plain progress lines when stderr is not a terminal.
const LINE_SECS: f64 = 10.0;

pub struct Progress {
    name: String,
    bar: Option<ProgressBar>,
    terminal: bool,
    every: Duration,
    last_line: Instant,
    /// The run's goal in steps, and the epochs, for the plain lines.
    total_steps: Option<u64>,
    epochs: usize,
    /// Steps and seconds of this session, for the rate.
    started: Instant,
    first_step: Option<u64>,
}

impl Progress {
    pub fn new(name: &str) -> Progress {
        let secs = std::env::var("QLSTM_PROGRESS_SECS").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(LINE_SECS);
        Progress {
            name: name.to_string(),
            bar: None,
            terminal: std::io::stderr().is_terminal(),
            every: Duration::from_secs_f64(secs.max(0.0)),
            last_line: Instant::now(),
            total_steps: None,
            epochs: 0,
            started: Instant::now(),
            first_step: None,
        }
    }

    fn bar(&mut self, len: u64, pos: u64, prefix: String) {
        let bar = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        bar.set_position(pos);
        self.bar = Some(bar);
    }

    /// Time for a plain line?
    fn line_due(&mut self) -> bool {
        if self.terminal || self.last_line.elapsed() < self.every {
            return false;
        }
        self.last_line = Instant::now();
        true
    }
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

impl Observer for Progress {
    fn resumed(&mut self, name: &str, checkpoint: &Path, s: &RunState) {
        println!(
            "{name}: resuming from {} at step {} (epoch {}, window {})",
            checkpoint.display(),
            s.step,
            s.epoch,
            s.window
        );
    }

    fn epoch_started(&mut self, epoch: usize, epochs: usize, windows: usize, done: usize, budget: Option<u64>) {
        self.epochs = epochs;
        let all = (windows * epochs) as u64;
        self.total_steps = Some(budget.map_or(all, |b| b.min(all)));
        if self.terminal {
            // The bar ends where this epoch's training will: its last window, or the budget.
            let this_epoch = budget.map_or(windows as u64, |b| {
                let done_steps = (epoch as u64 - 1) * windows as u64 + done as u64;
                (done as u64 + b.saturating_sub(done_steps)).min(windows as u64)
            });
            self.bar(this_epoch, done as u64, format!("epoch {epoch}/{epochs}"));
        }
    }

    fn window_trained(&mut self, s: &RunState) {
        let first = *self.first_step.get_or_insert(s.step.saturating_sub(1));
        let loss = s.epoch_stats.mean_loss();
        let speed = s.epoch_tokens as f64 / s.epoch_secs.max(1e-9);
        if let Some(b) = &self.bar {
            b.set_position(s.window as u64);
            b.set_message(format!("loss {loss:.4} nats  {speed:.0} tok/s"));
        }
        if self.line_due() {
            let total = self.total_steps.unwrap_or(s.step);
            let rate = (s.step - first) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta = if rate > 0.0 { duration(total.saturating_sub(s.step) as f64 / rate) } else { "?".into() };
            eprintln!(
                "{}: epoch {}/{} step {}/{total}, train loss {loss:.4} nats, {speed:.0} tok/s, eta {eta}",
                self.name, s.epoch, self.epochs, s.step
            );
        }
    }

    fn epoch_trained(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn evaluating(&mut self, split: Split, done: usize, total: usize) {
        let what = if split == Split::Valid { "valid" } else { "test" };
        if done == 0 && self.terminal {
            self.bar(total as u64, 0, format!("evaluating {what}"));
        }
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            if done == total {
                self.bar.take().unwrap().finish_and_clear();
            }
        } else if self.line_due() {
            eprintln!("{}: evaluating {what}, {done}/{total} windows", self.name);
        }
    }

    fn epoch_evaluated(&mut self, name: &str, row: &EpochRow, m: Metric) {
        println!(
            "{name} epoch {} (step {}): train loss {:.4} nats, valid loss {:.4} nats = {:.3} {m}, test {:.3} {m}, {:.0} train tok/s",
            row.epoch, row.step, row.train_loss, row.valid_loss, row.valid_metric, row.test_metric, row.tokens_per_s
        );
    }

    fn diverged(&mut self, name: &str, step: u64, why: Divergence) {
        match why {
            Divergence::Loss { mean_loss, ceiling } => {
                eprintln!(
                    "{name}: diverged at step {step} (mean training loss {mean_loss:.4} nats; ceiling {ceiling:.2} nats)"
                )
            }
            Divergence::Gradient { mean_loss } => eprintln!(
                "{name}: diverged at step {step} (the gradient overflowed f32 in backpropagation through the window; \
                 mean training loss {mean_loss:.4} nats)"
            ),
        }
    }
}
