//! What `qlstm run` shows while it trains: a progress bar per epoch on a terminal, one line per
//! evaluated epoch, and a line when a run resumes or diverges.

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::run_dir::{EpochRow, Metric};
use crate::train::Observer;
use crate::train::resume::RunState;

pub struct Progress {
    bar: Option<ProgressBar>,
    terminal: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress { bar: None, terminal: std::io::stdout().is_terminal() }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
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

    fn epoch_started(&mut self, epoch: usize, epochs: usize, windows: usize, done: usize, _budget: Option<u64>) {
        if !self.terminal {
            return;
        }
        let bar = ProgressBar::new(windows as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        bar.set_position(done as u64);
        self.bar = Some(bar);
    }

    fn window_trained(&mut self, s: &RunState) {
        if let Some(b) = &self.bar {
            b.set_position(s.window as u64);
            b.set_message(format!(
                "loss {:.4}  {:.0} tok/s",
                s.epoch_stats.mean_loss(),
                s.epoch_tokens as f64 / s.epoch_secs
            ));
        }
    }

    fn epoch_trained(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn epoch_evaluated(&mut self, name: &str, row: &EpochRow, m: Metric) {
        println!(
            "{name} epoch {}: train {:.4} valid {:.4} ({m} {:.3}) test {m} {:.3}, {:.0} tok/s",
            row.epoch, row.train_loss, row.valid_loss, row.valid_metric, row.test_metric, row.tokens_per_s
        );
    }

    fn diverged(&mut self, name: &str, step: u64, loss: f64, ceiling: f64) {
        eprintln!("{name}: diverged at step {step} (training loss {loss:.4} nats; ceiling {ceiling:.2})");
    }
}
