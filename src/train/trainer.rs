//! The epoch loop (SPEC §3): truncated BPTT with carried, detached state for language models,
//! whole 784-step sequences for MNIST; evaluation on valid and test after every epoch; the
//! learning-rate schedules; checkpoints, resume, interruption and divergence; the run's files.
//! The test figure reported is the one at the epoch with the best validation loss.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_pcg::Pcg64Mcg;

use crate::bail;
use crate::checkpoint;
use crate::data::task::mnist_batch;
use crate::data::{Streams, TaskData};
use crate::diag::{Diagnostics, GradNormRow, LambdaRow};
use crate::error::{Error, Result, io_err};
use crate::model::{Input, Model, State, Stats};
use crate::report::{EpochRow, Summary, csv::to_csv, write_atomic};
use crate::spec::{Normalization, Quantizer, Schedule, Spec};
use crate::train::{Optimizer, clip_grad_norm};

/// How a finished (or stopped) run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub summary: Summary,
    pub epochs: Vec<EpochRow>,
    pub dir: PathBuf,
}

/// Where a run stands: enough to write every file and to resume exactly.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The epoch in progress (1-based) and the windows of it already trained.
    pub epoch: usize,
    pub window: usize,
    /// Training statistics, input tokens and seconds of the epoch in progress.
    pub epoch_stats: Stats,
    pub epoch_tokens: usize,
    pub epoch_secs: f64,
    /// Input tokens and training seconds of the whole run (all sessions).
    pub total_tokens: usize,
    pub total_secs: f64,
    /// Wall seconds spent in earlier sessions of a resumed run.
    pub wall_before: f64,
    pub rows: Vec<EpochRow>,
    /// Index into `rows` of the best validation loss.
    pub best: Option<usize>,
    pub diverged_step: Option<u64>,
}

/// How an epoch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochEnd {
    Done,
    Interrupted,
    Diverged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Valid,
    Test,
}

enum Window {
    Lm { start: usize, steps: usize },
    Images(Vec<usize>),
}

pub struct Trainer {
    pub spec: Spec,
    pub data: TaskData,
    pub model: Model<f32>,
    pub opt: Optimizer<f32>,
    /// Current learning rates: latent LSTM weights, everything else.
    pub lr_latent: f64,
    pub lr_other: f64,
    pub step: u64,
    pub progress: Progress,
    /// Progress bars on a terminal; one line per epoch otherwise. Off in tests.
    pub verbose: bool,
    /// (layer, index of w_x, index of w_h) in the parameter list, for lab/lat curvature.
    latent_index: Vec<(usize, usize, usize)>,
    /// Language models: train, valid, test cut into streams once.
    streams: Option<[Streams; 3]>,
    /// Language models: the state carried from the last window into the next.
    carried: Option<State<f32>>,
    diag: Diagnostics,
    pub lambda_rows: Vec<LambdaRow>,
    pub grad_rows: Vec<GradNormRow>,
    /// (λ every, gradient trace every) in steps, 0 = off.
    diag_every: (u64, u64),
    /// A mean training loss above this (nats) counts as divergence.
    max_loss: f64,
    /// The run directory while `run` is going.
    dir: Option<PathBuf>,
}

/// A generator for one purpose and index, derived from the run's seed: the dropout masks of
/// step s, the shuffle of epoch e. Nothing about randomness needs saving to resume exactly.
fn derived_rng(seed: u64, purpose: u64, index: u64) -> Pcg64Mcg {
    // splitmix64 finalizer over the three inputs
    let mut z = seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    Pcg64Mcg::seed_from_u64(z ^ (z >> 31))
}
const RNG_STEP: u64 = 1;
const RNG_SHUFFLE: u64 = 2;

impl Trainer {
    /// Load the data and build the model; nothing is written yet, so bad input leaves no files.
    pub fn new(spec: Spec) -> Result<Trainer> {
        let data = TaskData::load(&spec)?;
        let streams = match &data {
            // Fails now, before any file is written, if a split cannot fill its streams.
            TaskData::Lm(c) => Some([
                Streams::new(&c.train, spec.train.batch_size, "train split (train.batch_size)")?,
                Streams::new(&c.valid, spec.train.eval_batch_size, "valid split (train.eval_batch_size)")?,
                Streams::new(&c.test, spec.train.eval_batch_size, "test split (train.eval_batch_size)")?,
            ]),
            TaskData::Mnist(..) => None,
        };
        check_memory(&spec, data.vocab())?;
        let mut model = Model::new(&spec, data.vocab(), &mut Pcg64Mcg::seed_from_u64(spec.seed));
        let params = model.params_mut();
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        let find = |n: String| names.iter().position(|x| *x == n).unwrap();
        let latent_index =
            (0..spec.model.layers).map(|l| (l, find(format!("lstm.{l}.w_x")), find(format!("lstm.{l}.w_h")))).collect();
        let opt = Optimizer::new(spec.train.optimizer, &params);
        let windows = match (&streams, &data) {
            (Some(s), _) => s[0].num_windows(spec.train.bptt),
            (None, TaskData::Mnist(m, _)) => m.train.len().div_ceil(spec.train.batch_size),
            _ => 1,
        } as u64;
        let d = &spec.diagnostics;
        let auto = |every: usize, per_epoch: u64| if every > 0 { every as u64 } else { (windows / per_epoch).max(1) };
        let diag_every = if d.enabled { (auto(d.lambda_every, 30), auto(d.grad_every, 5)) } else { (0, 0) };
        let max_loss = if spec.train.max_loss > 0.0 { spec.train.max_loss } else { 3.0 * (data.vocab() as f64).ln() };
        Ok(Trainer {
            lr_other: spec.train.lr,
            lr_latent: spec.train.lr * spec.train.latent_lr_scale,
            spec,
            data,
            model,
            opt,
            step: 0,
            progress: Progress::default(),
            verbose: true,
            latent_index,
            streams,
            carried: None,
            diag: Diagnostics::default(),
            lambda_rows: Vec::new(),
            grad_rows: Vec::new(),
            diag_every,
            max_loss,
            dir: None,
        })
    }

    /// Train for the spec's budget, writing `<out>/<name>/`: spec.toml, metrics.csv,
    /// summary.csv, lambda.csv, grad_norm.csv, checkpoint.safetensors, best.safetensors.
    /// With `resume`, continue from the run's checkpoint if there is one.
    pub fn run(&mut self, out_root: &Path, resume: bool) -> Result<RunOutcome> {
        let dir = out_root.join(&self.spec.name);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let ckpt = dir.join("checkpoint.safetensors");
        if resume && ckpt.exists() {
            self.restore(&ckpt)?;
            self.restore_diagnostics(&dir)?;
        } else {
            // A fresh run must not leave an older run's checkpoints to be resumed from.
            for f in ["checkpoint.safetensors", "best.safetensors", "summary.csv"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        self.dir = Some(dir.clone());
        write_atomic(&dir.join("spec.toml"), self.spec.to_toml().as_bytes())?;
        let start = Instant::now();
        let first = self.progress.epoch.max(1);
        let mut status = "ok";
        for epoch in first..=self.spec.train.epochs {
            if self.progress.epoch != epoch {
                self.progress.epoch = epoch;
                self.progress.window = 0;
            }
            if self.progress.window == 0 {
                self.progress.epoch_stats = Stats::default();
                self.progress.epoch_tokens = 0;
                self.progress.epoch_secs = 0.0;
            }
            let lr_this_epoch = self.lr_latent;
            match self.train_epoch(epoch)? {
                EpochEnd::Interrupted => {
                    status = "interrupted";
                    self.save_checkpoint(&ckpt, start)?;
                    break;
                }
                EpochEnd::Diverged => {
                    status = "diverged";
                    break;
                }
                EpochEnd::Done => {}
            }
            let valid = self.evaluate(Split::Valid);
            let test = self.evaluate(Split::Test);
            let p = &self.progress;
            let row = EpochRow {
                epoch,
                step: self.step,
                lr: lr_this_epoch,
                train_loss: p.epoch_stats.mean_loss(),
                valid_loss: valid.mean_loss(),
                valid_metric: self.metric(&valid),
                test_loss: test.mean_loss(),
                test_metric: self.metric(&test),
                tokens_per_s: p.epoch_tokens as f64 / p.epoch_secs.max(1e-9),
                wall_s: p.wall_before + start.elapsed().as_secs_f64(),
            };
            if self.verbose {
                let m = self.spec.task.metric();
                println!(
                    "{} epoch {epoch}: train {:.4} valid {:.4} ({m} {:.3}) test {m} {:.3}, {:.0} tok/s",
                    self.spec.name, row.train_loss, row.valid_loss, row.valid_metric, row.test_metric, row.tokens_per_s
                );
            }
            if !row.valid_loss.is_finite() {
                status = "diverged";
                self.progress.diverged_step = Some(self.step);
            }
            let improved = self.progress.best.is_none_or(|b| row.valid_loss < self.progress.rows[b].valid_loss);
            self.progress.rows.push(row);
            if improved && status == "ok" {
                self.progress.best = Some(self.progress.rows.len() - 1);
                self.save_model(&dir.join("best.safetensors"))?;
            }
            write_atomic(&dir.join("metrics.csv"), &to_csv(&self.progress.rows)?)?;
            self.write_diagnostics(&dir)?;
            if status != "ok" {
                break;
            }
            let done = self.budget_spent() || epoch == self.spec.train.epochs;
            if !done {
                self.end_of_epoch_schedule(epoch, improved);
            }
            self.progress.epoch = epoch + 1;
            self.progress.window = 0;
            self.save_checkpoint(&ckpt, start)?;
            if done {
                break;
            }
        }
        let summary = self.summary(status, start);
        if self.progress.rows.is_empty() {
            write_atomic(&dir.join("metrics.csv"), &to_csv::<EpochRow>(&[])?)?;
        }
        self.write_diagnostics(&dir)?;
        write_atomic(&dir.join("summary.csv"), &to_csv(std::slice::from_ref(&summary))?)?;
        self.dir = None;
        Ok(RunOutcome { summary, epochs: self.progress.rows.clone(), dir })
    }

    fn summary(&self, status: &str, start: Instant) -> Summary {
        let p = &self.progress;
        let b = p.best.map(|i| &p.rows[i]);
        Summary {
            name: self.spec.name.clone(),
            task: self.spec.task.name().into(),
            layers: self.spec.model.layers,
            hidden: self.spec.model.hidden,
            quantizer: Quantizer::ALL[self.spec.model.quantizer as usize].into(),
            normalization: Normalization::ALL[self.spec.model.normalization as usize].into(),
            epochs_run: p.rows.len(),
            steps: self.step,
            best_epoch: b.map_or(0, |r| r.epoch),
            metric: self.spec.task.metric().into(),
            valid_metric: b.map_or(f64::NAN, |r| r.valid_metric),
            test_metric: b.map_or(f64::NAN, |r| r.test_metric),
            test_loss_nats: b.map_or(f64::NAN, |r| r.test_loss),
            size_kb: crate::size::size_kb(&self.spec, self.data.vocab()),
            train_tokens_per_s: p.total_tokens as f64 / p.total_secs.max(1e-9),
            wall_s: p.wall_before + start.elapsed().as_secs_f64(),
            status: status.into(),
            diverged_step: p.diverged_step,
        }
    }

    fn budget_spent(&self) -> bool {
        self.spec.train.max_steps > 0 && self.step >= self.spec.train.max_steps as u64
    }

    /// SPEC §3's schedules, applied after the epoch's evaluation.
    fn end_of_epoch_schedule(&mut self, epoch: usize, improved: bool) {
        let t = &self.spec.train;
        match t.schedule {
            Schedule::LatentDecay => {
                if epoch >= t.lr_decay_start {
                    self.lr_latent *= t.lr_decay;
                }
            }
            Schedule::Plateau => {
                if !improved {
                    self.lr_latent /= t.plateau_factor;
                    self.lr_other /= t.plateau_factor;
                }
            }
            Schedule::Geometric => {
                self.lr_latent *= t.lr_decay;
                self.lr_other *= t.lr_decay;
            }
            Schedule::Constant => {}
        }
    }

    /// The task's metric (bpc, ppl or error %) of evaluation statistics.
    pub fn metric(&self, s: &Stats) -> f64 {
        match self.spec.task.metric() {
            "bpc" => s.mean_loss() / std::f64::consts::LN_2,
            "ppl" => s.mean_loss().exp(),
            _ => 100.0 * (1.0 - s.correct as f64 / s.count.max(1) as f64),
        }
    }

    /// Train the windows of `epoch` from `progress.window` on, until the epoch or the step
    /// budget ends, a stop is requested, or the loss diverges. Statistics accumulate in
    /// `progress`; checkpoints are written every `train.checkpoint_every` steps.
    pub fn train_epoch(&mut self, epoch: usize) -> Result<EpochEnd> {
        self.progress.epoch = epoch;
        let windows = self.train_windows(epoch);
        let bar = self.progress_bar(epoch, windows.len());
        let t0 = Instant::now();
        let (secs_before, total_secs_before) = (self.progress.epoch_secs, self.progress.total_secs);
        let mut end = EpochEnd::Done;
        for (i, w) in windows.iter().enumerate().skip(self.progress.window) {
            if self.budget_spent() {
                break;
            }
            if crate::signal::interrupted() {
                end = EpochEnd::Interrupted;
                break;
            }
            let mut rng = derived_rng(self.spec.seed, RNG_STEP, self.step);
            let (s, n) = match w {
                Window::Lm { start, steps } => {
                    let (x, y) = self.streams.as_ref().unwrap()[0].window(*start, *steps);
                    let (x, y) = (x.to_vec(), y.to_vec());
                    let st = match self.carried.take() {
                        Some(s) if i > 0 => s,
                        _ => State::zeros(self.spec.model.layers, self.spec.train.batch_size, self.spec.model.hidden),
                    };
                    let s = self.train_step(Input::Tokens(&x), &y, &st, &mut rng);
                    self.carried = Some(self.model.final_state());
                    (s, x.len())
                }
                Window::Images(idx) => {
                    let TaskData::Mnist(m, order) = &self.data else { unreachable!() };
                    let (pixels, labels) = mnist_batch(&m.train, idx, order);
                    let st = self.model.initial_state_train(idx.len(), &mut rng);
                    (self.train_step(Input::Pixels(pixels.view()), &labels, &st, &mut rng), pixels.nrows())
                }
            };
            if !(s.loss_sum.is_finite() && s.mean_loss() <= self.max_loss) {
                self.progress.diverged_step = Some(self.step);
                if self.verbose {
                    eprintln!(
                        "{}: diverged at step {} (training loss {:.4} nats; ceiling {:.2})",
                        self.spec.name,
                        self.step,
                        s.mean_loss(),
                        self.max_loss
                    );
                }
                end = EpochEnd::Diverged;
                break;
            }
            let p = &mut self.progress;
            p.epoch_stats.add(s);
            p.epoch_tokens += n;
            p.total_tokens += n;
            p.window = i + 1;
            p.epoch_secs = secs_before + t0.elapsed().as_secs_f64();
            p.total_secs = total_secs_before + t0.elapsed().as_secs_f64();
            if let Some(b) = &bar {
                b.set_position(i as u64 + 1);
                b.set_message(format!(
                    "loss {:.4}  {:.0} tok/s",
                    p.epoch_stats.mean_loss(),
                    p.epoch_tokens as f64 / p.epoch_secs
                ));
            }
            let every = self.spec.train.checkpoint_every as u64;
            if every > 0
                && self.step.is_multiple_of(every)
                && p.window < windows.len()
                && let Some(dir) = self.dir.clone()
            {
                self.save_checkpoint(&dir.join("checkpoint.safetensors"), Instant::now())?;
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(end)
    }

    /// Forward, backward, clip, update: one optimizer step on one window. A non-finite
    /// gradient is reported as a non-finite loss.
    fn train_step(&mut self, input: Input<f32>, targets: &[u32], state: &State<f32>, rng: &mut Pcg64Mcg) -> Stats {
        let stats = forward_backward(&mut self.model, input, targets, state, rng);
        if !stats.loss_sum.is_finite() {
            return stats;
        }
        self.record_diagnostics();
        if !update(&mut self.model, &mut self.opt, self.spec.train.clip, self.lr_latent, self.lr_other) {
            return Stats { loss_sum: f64::NAN, ..stats };
        }
        self.step += 1;
        self.refresh_curvature();
        stats
    }

    /// λ rows and gradient-norm traces of the window just run, at the configured intervals
    /// (`step` is the number of updates made before this window: 0 is the initial model).
    fn record_diagnostics(&mut self) {
        let (le, ge) = self.diag_every;
        if le > 0 && self.step.is_multiple_of(le) {
            let rows = self.diag.lambda_rows(&self.model, self.step, self.progress.epoch);
            self.lambda_rows.extend(rows);
        }
        if ge > 0 && self.step.is_multiple_of(ge) {
            for (layer, norms) in self.model.grad_norms().into_iter().enumerate() {
                for (t, &g) in norms.iter().enumerate() {
                    self.grad_rows.push(GradNormRow {
                        step: self.step,
                        epoch: self.progress.epoch,
                        layer,
                        t,
                        grad_norm: g,
                    });
                }
            }
        }
    }

    fn write_diagnostics(&self, dir: &Path) -> Result<()> {
        if self.spec.diagnostics.enabled {
            write_atomic(&dir.join("lambda.csv"), &to_csv_or_header(&self.lambda_rows, LAMBDA_HEADER)?)?;
            write_atomic(&dir.join("grad_norm.csv"), &to_csv_or_header(&self.grad_rows, GRAD_HEADER)?)?;
        }
        Ok(())
    }

    /// lab/lat read d = √v + 1e-8 from Adam's raw second moment of each latent weight.
    fn refresh_curvature(&mut self) {
        if !matches!(self.spec.model.quantizer, Quantizer::Lab | Quantizer::Lat)
            || self.opt.v.is_empty()
            || self.opt.t == 0
        {
            return;
        }
        for &(l, ix, ih) in &self.latent_index {
            let d = |v: &Array2<f32>| v.mapv(|v| v.sqrt() + 1e-8);
            let layer = &mut self.model.layers[l];
            if layer.quantize_input {
                layer.curvature_x = Some(d(&self.opt.v[ix]));
            }
            layer.curvature_h = Some(d(&self.opt.v[ih]));
        }
    }

    fn train_windows(&self, epoch: usize) -> Vec<Window> {
        match &self.data {
            TaskData::Lm(_) => self.streams.as_ref().unwrap()[0]
                .windows(self.spec.train.bptt)
                .map(|(start, steps)| Window::Lm { start, steps })
                .collect(),
            TaskData::Mnist(m, _) => {
                let mut idx: Vec<usize> = (0..m.train.len()).collect();
                idx.shuffle(&mut derived_rng(self.spec.seed, RNG_SHUFFLE, epoch as u64));
                idx.chunks(self.spec.train.batch_size).map(|c| Window::Images(c.to_vec())).collect()
            }
        }
    }

    /// Mean loss over a split: carried state, dropout off, batch `eval_batch_size`.
    pub fn evaluate(&mut self, split: Split) -> Stats {
        let eb = self.spec.train.eval_batch_size;
        let mut total = Stats::default();
        let mut unused = Pcg64Mcg::seed_from_u64(0); // dropout is off in evaluation
        match &self.data {
            TaskData::Lm(_) => {
                let streams = &self.streams.as_ref().unwrap()[if split == Split::Valid { 1 } else { 2 }];
                let mut state = State::zeros(self.spec.model.layers, eb, self.spec.model.hidden);
                for (start, steps) in streams.windows(self.spec.train.bptt) {
                    let (x, y) = streams.window(start, steps);
                    total.add(self.model.forward(Input::Tokens(x), y, &state, false, &mut unused));
                    state = self.model.final_state();
                }
            }
            TaskData::Mnist(m, order) => {
                let set = if split == Split::Valid { &m.valid } else { &m.test };
                let idx: Vec<usize> = (0..set.len()).collect();
                for chunk in idx.chunks(eb) {
                    let (pixels, labels) = mnist_batch(set, chunk, order);
                    let state = self.model.initial_state(chunk.len());
                    total.add(self.model.forward(Input::Pixels(pixels.view()), &labels, &state, false, &mut unused));
                }
            }
        }
        total
    }

    fn progress_bar(&self, epoch: usize, len: usize) -> Option<ProgressBar> {
        if !self.verbose || !std::io::stdout().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new(len as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {epoch}/{}", self.spec.train.epochs));
        bar.set_position(self.progress.window as u64);
        Some(bar)
    }

    // ------------------------------------------------------------------ checkpoints

    /// The model's tensors only (best.safetensors): what `qlstm eval` needs.
    fn save_model(&mut self, path: &Path) -> Result<()> {
        let meta = HashMap::from([
            ("spec".to_string(), self.spec.to_toml()),
            ("step".to_string(), self.step.to_string()),
            ("epoch".to_string(), self.progress.epoch.to_string()),
        ]);
        checkpoint::write(path, &model_views(&mut self.model), meta)
    }

    /// Everything needed to continue exactly: model, optimizer moments, carried state,
    /// position, learning rates, the partial epoch's statistics and the metrics so far.
    fn save_checkpoint(&mut self, path: &Path, start: Instant) -> Result<()> {
        let p = &self.progress;
        let f = |x: f64| format!("{x:?}"); // round-trips exactly
        let meta = HashMap::from([
            ("spec".to_string(), self.spec.to_toml()),
            ("step".to_string(), self.step.to_string()),
            ("epoch".to_string(), p.epoch.to_string()),
            ("window".to_string(), p.window.to_string()),
            ("lr_latent".to_string(), f(self.lr_latent)),
            ("lr_other".to_string(), f(self.lr_other)),
            ("optimizer_t".to_string(), self.opt.t.to_string()),
            ("epoch_loss_sum".to_string(), f(p.epoch_stats.loss_sum)),
            ("epoch_count".to_string(), p.epoch_stats.count.to_string()),
            ("epoch_correct".to_string(), p.epoch_stats.correct.to_string()),
            ("epoch_tokens".to_string(), p.epoch_tokens.to_string()),
            ("epoch_secs".to_string(), f(p.epoch_secs)),
            ("total_tokens".to_string(), p.total_tokens.to_string()),
            ("total_secs".to_string(), f(p.total_secs)),
            ("wall_s".to_string(), f(p.wall_before + start.elapsed().as_secs_f64())),
            ("best".to_string(), p.best.map_or(String::new(), |b| b.to_string())),
            ("metrics".to_string(), String::from_utf8(to_csv(&p.rows)?).unwrap()),
        ]);
        let names: Vec<String> = self.model.params_mut().iter().map(|p| p.name.clone()).collect();
        let mut views = model_views(&mut self.model);
        for (n, (m, v)) in names.iter().zip(self.opt.m.iter().zip(&self.opt.v)) {
            views.push((format!("optimizer.m.{n}"), m.view()));
            views.push((format!("optimizer.v.{n}"), v.view()));
        }
        if let (Some(st), true) = (&self.carried, self.progress.window > 0) {
            for (l, (h, c)) in st.h.iter().zip(&st.c).enumerate() {
                views.push((format!("state.h.{l}"), h.view()));
                views.push((format!("state.c.{l}"), c.view()));
            }
        }
        checkpoint::write(path, &views, meta)?;
        if let Some(dir) = path.parent() {
            self.write_diagnostics(dir)?;
        }
        Ok(())
    }

    /// Load the model's tensors from a checkpoint (training or best), checking the spec.
    pub fn load_model(&mut self, ck: &mut checkpoint::Loaded) -> Result<()> {
        let theirs = Spec::from_toml_str(ck.meta("spec")?, &ck.path, None, &[])?;
        check_same_model(&self.spec, &theirs, &ck.path)?;
        for (name, slot) in self.model.named_tensors_mut() {
            let t = ck.take(&name, slot.dim())?;
            slot.assign(&t);
        }
        Ok(())
    }

    fn restore(&mut self, path: &Path) -> Result<()> {
        let mut ck = checkpoint::read(path)?;
        self.load_model(&mut ck)?;
        let names: Vec<(String, (usize, usize))> =
            self.model.params_mut().iter().map(|p| (p.name.clone(), p.value.dim())).collect();
        if !self.opt.m.is_empty() {
            for (i, (n, dim)) in names.iter().enumerate() {
                self.opt.m[i] = ck.take(&format!("optimizer.m.{n}"), *dim)?;
                self.opt.v[i] = ck.take(&format!("optimizer.v.{n}"), *dim)?;
            }
        }
        self.opt.t = ck.parse("optimizer_t")?;
        self.step = ck.parse("step")?;
        self.lr_latent = ck.parse("lr_latent")?;
        self.lr_other = ck.parse("lr_other")?;
        let rows = {
            let text = ck.meta("metrics")?.to_string();
            let mut r = csv::Reader::from_reader(text.as_bytes());
            r.deserialize()
                .collect::<std::result::Result<Vec<EpochRow>, _>>()
                .map_err(|e| Error::new(format!("{}: metrics: {e}", ck.path)))?
        };
        let best: String = ck.meta("best")?.to_string();
        self.progress = Progress {
            epoch: ck.parse("epoch")?,
            window: ck.parse("window")?,
            epoch_stats: Stats {
                loss_sum: ck.parse("epoch_loss_sum")?,
                count: ck.parse("epoch_count")?,
                correct: ck.parse("epoch_correct")?,
            },
            epoch_tokens: ck.parse("epoch_tokens")?,
            epoch_secs: ck.parse("epoch_secs")?,
            total_tokens: ck.parse("total_tokens")?,
            total_secs: ck.parse("total_secs")?,
            wall_before: ck.parse("wall_s")?,
            best: if best.is_empty() {
                None
            } else {
                Some(best.parse().map_err(|_| Error::new(format!("{}: bad `best`", ck.path)))?)
            },
            rows,
            diverged_step: None,
        };
        if self.progress.window > 0 && self.streams.is_some() {
            let (l, b, h) = (self.spec.model.layers, self.spec.train.batch_size, self.spec.model.hidden);
            let mut st = State::zeros(l, b, h);
            for i in 0..l {
                st.h[i] = ck.take(&format!("state.h.{i}"), (b, h))?;
                st.c[i] = ck.take(&format!("state.c.{i}"), (b, h))?;
            }
            self.carried = Some(st);
        }
        self.refresh_curvature();
        if self.verbose {
            println!(
                "{}: resuming from {} at step {} (epoch {}, window {})",
                self.spec.name,
                path.display(),
                self.step,
                self.progress.epoch,
                self.progress.window
            );
        }
        Ok(())
    }

    /// The diagnostics rows written before the checkpoint (later ones are recomputed).
    fn restore_diagnostics(&mut self, dir: &Path) -> Result<()> {
        let step = self.step;
        self.lambda_rows =
            read_rows::<LambdaRow>(&dir.join("lambda.csv"))?.into_iter().filter(|r| r.step < step).collect();
        self.grad_rows =
            read_rows::<GradNormRow>(&dir.join("grad_norm.csv"))?.into_iter().filter(|r| r.step < step).collect();
        Ok(())
    }
}

/// All rows of a CSV file written by `to_csv` (none if the file does not exist).
fn read_rows<R: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<R>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r = csv::Reader::from_path(path).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    r.deserialize()
        .collect::<std::result::Result<Vec<R>, _>>()
        .map_err(|e| Error::new(format!("{}: {e}", path.display())))
}

/// Views of every model tensor a checkpoint holds, by name (no copies).
fn model_views(model: &mut Model<f32>) -> Vec<(String, ArrayView2<'_, f32>)> {
    model
        .named_tensors_mut()
        .into_iter()
        .map(|(n, a)| {
            let a: &Array2<f32> = a;
            (n, a.view())
        })
        .collect()
}

/// The gradient of one window: zero the grads, forward in training mode, backward (skipped
/// when the loss is not finite).
pub fn forward_backward<R: rand::Rng>(
    model: &mut Model<f32>,
    input: Input<f32>,
    targets: &[u32],
    state: &State<f32>,
    rng: &mut R,
) -> Stats {
    model.zero_grad();
    let stats = model.forward(input, targets, state, true, rng);
    if stats.loss_sum.is_finite() {
        model.backward(input);
    }
    stats
}

/// Clip the gradients to `clip` (global norm) and take an optimizer step; false (and no step)
/// if the gradient is not finite.
pub fn update(model: &mut Model<f32>, opt: &mut Optimizer<f32>, clip: f64, lr_latent: f64, lr_other: f64) -> bool {
    let mut params = model.params_mut();
    let norm = clip_grad_norm(&mut params, clip);
    if !norm.is_finite() {
        return false;
    }
    opt.step(&mut params, lr_latent, lr_other);
    true
}

/// A checkpoint fits this spec if everything that shapes the model and the data agrees; the
/// budget (epochs, max_steps), checkpoint interval and diagnostics may change between sessions.
fn check_same_model(ours: &Spec, theirs: &Spec, path: &str) -> Result<()> {
    let strip = |s: &Spec| {
        let mut s = s.clone();
        s.name = String::new();
        s.data.dir = String::new();
        s.train.epochs = 0;
        s.train.max_steps = 0;
        s.train.checkpoint_every = 0;
        s.diagnostics = crate::spec::Spec::defaults(s.task).diagnostics;
        s
    };
    let (a, b) = (strip(ours), strip(theirs));
    if a != b {
        let (ta, tb) = (a.to_toml(), b.to_toml());
        let diff: Vec<String> =
            ta.lines().zip(tb.lines()).filter(|(x, y)| x != y).map(|(x, y)| format!("{y} → {x}")).collect();
        bail!(
            "{path}: the checkpoint was written for a different spec ({}); start afresh without --resume",
            diff.join("; ")
        );
    }
    Ok(())
}

/// Bytes a run needs, estimated: parameters with their gradients and Adam moments, the
/// window caches of every layer (gates, h/c/tanh c, their gradients, normalizer caches), the
/// logits, and the per-window weight copies.
pub fn memory_estimate(spec: &Spec, vocab: usize) -> f64 {
    let m = &spec.model;
    let (h, l) = (m.hidden as f64, m.layers as f64);
    let r = spec.input_size(vocab) as f64;
    let params = 4.0 * h * (r + h + 3.0)
        + 4.0 * h * (h + h + 3.0) * (l - 1.0)
        + (vocab as f64) * (h + 1.0)
        + (vocab * m.embedding) as f64;
    let rows = (spec.train.batch_size.max(spec.train.eval_batch_size) * spec.train.bptt) as f64;
    let per_layer = rows * (4.0 + 3.0 + 4.0 + 16.0) * h;
    let floats = params * 4.0 + l * per_layer + 2.0 * rows * vocab as f64 + 8.0 * h * (r + h) * l;
    floats * 4.0
}

/// Refuse a model that cannot fit in memory, with an estimate, before allocating it.
fn check_memory(spec: &Spec, vocab: usize) -> Result<()> {
    let m = &spec.model;
    let rows = spec.train.batch_size.max(spec.train.eval_batch_size) * spec.train.bptt;
    let bytes = memory_estimate(spec, vocab);
    if let Some(avail) = available_memory()
        && bytes > 0.9 * avail
    {
        bail!(
            "model.hidden = {}, model.layers = {}, batch × bptt = {}: training needs about {:.1} GiB of memory, {:.1} GiB is available",
            m.hidden,
            m.layers,
            rows,
            bytes / (1u64 << 30) as f64,
            avail / (1u64 << 30) as f64
        );
    }
    Ok(())
}

fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

const LAMBDA_HEADER: &str = "step,epoch,layer,lambda1,lambda2,gamma1,norm_i,g_i,sigma_i,norm_f,g_f,sigma_f,norm_a,g_a,sigma_a,norm_o,g_o,sigma_o\n";
const GRAD_HEADER: &str = "step,epoch,layer,t,grad_norm\n";

/// CSV of `rows`, or just the header when there are none (serde writes headers from a row).
fn to_csv_or_header<R: serde::Serialize>(rows: &[R], header: &str) -> Result<Vec<u8>> {
    if rows.is_empty() { Ok(header.as_bytes().to_vec()) } else { to_csv(rows) }
}
