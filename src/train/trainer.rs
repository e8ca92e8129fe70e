//! The epoch loop (SPEC §3): truncated BPTT with carried, detached state for language models,
//! whole 784-step sequences for MNIST; evaluation on valid and test after every epoch; the
//! learning-rate schedules; the run's files. The test figure reported is the one at the epoch
//! with the best validation loss.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_pcg::Pcg64Mcg;

use crate::data::mnist::{MnistSplit, PIXELS};
use crate::data::{Corpus, Mnist, Streams};
use crate::diag::{Diagnostics, GradNormRow, LambdaRow};
use crate::error::{Result, io_err};
use crate::model::{Input, Model, State, Stats};
use crate::report::{EpochRow, Summary, csv::to_csv, write_atomic};
use crate::spec::{Quantizer, Schedule, Spec, Task};
use crate::train::{Optimizer, clip_grad_norm};

/// The loaded data of a task.
pub enum TaskData {
    Lm(Corpus),
    /// MNIST with the pixel order (identity, or pmnist's fixed permutation).
    Mnist(Mnist, Vec<usize>),
}

impl TaskData {
    pub fn load(spec: &Spec) -> Result<TaskData> {
        let dir = Path::new(&spec.data.dir);
        if spec.task.is_mnist() {
            let mut order: Vec<usize> = (0..PIXELS).collect();
            if spec.task == Task::Pmnist {
                order.shuffle(&mut Pcg64Mcg::seed_from_u64(spec.data.permutation_seed));
            }
            Ok(TaskData::Mnist(Mnist::load(dir)?, order))
        } else {
            Ok(TaskData::Lm(Corpus::load(spec.task, dir)?))
        }
    }

    /// Softmax width of language models (10 classes for MNIST).
    pub fn vocab(&self) -> usize {
        match self {
            TaskData::Lm(c) => c.vocab(),
            TaskData::Mnist(..) => 10,
        }
    }
}

/// How a finished run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub summary: Summary,
    pub epochs: Vec<EpochRow>,
    pub dir: PathBuf,
}

pub struct Trainer {
    pub spec: Spec,
    pub data: TaskData,
    pub model: Model<f32>,
    pub opt: Optimizer<f32>,
    rng: Pcg64Mcg,
    /// Current learning rates: latent LSTM weights, everything else.
    pub lr_latent: f64,
    pub lr_other: f64,
    pub step: u64,
    /// Progress bars on a terminal; one line per epoch otherwise. Off in tests.
    pub verbose: bool,
    /// (layer, index of w_x, index of w_h) in the parameter list, for lab/lat curvature.
    latent_index: Vec<(usize, usize, usize)>,
    /// Language models: train, valid, test cut into streams once.
    streams: Option<[Streams; 3]>,
    diag: Diagnostics,
    pub lambda_rows: Vec<LambdaRow>,
    pub grad_rows: Vec<GradNormRow>,
    /// (λ every, gradient trace every) in steps, 0 = off; the epoch being trained.
    diag_every: (u64, u64),
    epoch: usize,
}

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
        let mut rng = Pcg64Mcg::seed_from_u64(spec.seed);
        let mut model = Model::new(&spec, data.vocab(), &mut rng);
        let params = model.params_mut();
        let latent_index = {
            let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            (0..spec.model.layers)
                .map(|l| {
                    let find = |n: String| names.iter().position(|x| *x == n).unwrap();
                    (l, find(format!("lstm.{l}.w_x")), find(format!("lstm.{l}.w_h")))
                })
                .collect()
        };
        let opt = Optimizer::new(spec.train.optimizer, &params);
        let lr_other = spec.train.lr;
        let lr_latent = spec.train.lr * spec.train.latent_lr_scale;
        let windows = match (&streams, &data) {
            (Some(s), _) => s[0].num_windows(spec.train.bptt),
            (None, TaskData::Mnist(m, _)) => m.train.len().div_ceil(spec.train.batch_size),
            _ => 1,
        } as u64;
        let d = &spec.diagnostics;
        let auto = |every: usize, per_epoch: u64| if every > 0 { every as u64 } else { (windows / per_epoch).max(1) };
        let diag_every = if d.enabled { (auto(d.lambda_every, 30), auto(d.grad_every, 5)) } else { (0, 0) };
        Ok(Trainer {
            spec,
            data,
            model,
            opt,
            rng,
            lr_latent,
            lr_other,
            step: 0,
            verbose: true,
            latent_index,
            streams,
            diag: Diagnostics::default(),
            lambda_rows: Vec::new(),
            grad_rows: Vec::new(),
            diag_every,
            epoch: 0,
        })
    }

    /// Train for the spec's budget, writing `<out>/<name>/{spec.toml, metrics.csv, summary.csv}`.
    pub fn run(&mut self, out_root: &Path) -> Result<RunOutcome> {
        let dir = out_root.join(&self.spec.name);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        write_atomic(&dir.join("spec.toml"), self.spec.to_toml().as_bytes())?;
        let start = Instant::now();
        let mut rows: Vec<EpochRow> = Vec::new();
        let mut best: Option<usize> = None; // index into rows
        let mut status = "ok";
        let (mut train_tokens, mut train_secs) = (0usize, 0.0f64);
        for epoch in 1..=self.spec.train.epochs {
            let lr_this_epoch = self.lr_latent;
            self.epoch = epoch;
            let t0 = Instant::now();
            let (train, tokens, diverged) = self.train_epoch(epoch)?;
            let secs = t0.elapsed().as_secs_f64();
            train_tokens += tokens;
            train_secs += secs;
            if diverged {
                status = "diverged";
                break;
            }
            let valid = self.evaluate(Split::Valid);
            let test = self.evaluate(Split::Test);
            let row = EpochRow {
                epoch,
                step: self.step,
                lr: lr_this_epoch,
                train_loss: train.mean_loss(),
                valid_loss: valid.mean_loss(),
                valid_metric: self.metric(&valid),
                test_loss: test.mean_loss(),
                test_metric: self.metric(&test),
                tokens_per_s: tokens as f64 / secs.max(1e-9),
                wall_s: start.elapsed().as_secs_f64(),
            };
            if !row.valid_loss.is_finite() {
                status = "diverged";
            }
            let improved = best.is_none_or(|b| row.valid_loss < rows[b].valid_loss);
            if self.verbose {
                println!(
                    "{} epoch {epoch}: train {:.4} valid {:.4} ({} {:.3}) test {} {:.3}, {:.0} tok/s",
                    self.spec.name,
                    row.train_loss,
                    row.valid_loss,
                    self.spec.task.metric(),
                    row.valid_metric,
                    self.spec.task.metric(),
                    row.test_metric,
                    row.tokens_per_s
                );
            }
            rows.push(row);
            if improved {
                best = Some(rows.len() - 1);
            }
            write_atomic(&dir.join("metrics.csv"), &to_csv(&rows)?)?;
            self.write_diagnostics(&dir)?;
            if status != "ok" || self.budget_spent() {
                break;
            }
            self.end_of_epoch_schedule(epoch, improved);
        }
        let b = best.map(|i| rows[i].clone());
        let summary = Summary {
            name: self.spec.name.clone(),
            task: self.spec.task.name().into(),
            layers: self.spec.model.layers,
            hidden: self.spec.model.hidden,
            quantizer: Quantizer::ALL[self.spec.model.quantizer as usize].into(),
            normalization: crate::spec::Normalization::ALL[self.spec.model.normalization as usize].into(),
            epochs_run: rows.len(),
            steps: self.step,
            best_epoch: b.as_ref().map_or(0, |r| r.epoch),
            metric: self.spec.task.metric().into(),
            valid_metric: b.as_ref().map_or(f64::NAN, |r| r.valid_metric),
            test_metric: b.as_ref().map_or(f64::NAN, |r| r.test_metric),
            test_loss_nats: b.as_ref().map_or(f64::NAN, |r| r.test_loss),
            size_kb: crate::size::size_kb(&self.spec, self.data.vocab()),
            train_tokens_per_s: train_tokens as f64 / train_secs.max(1e-9),
            wall_s: start.elapsed().as_secs_f64(),
            status: status.into(),
        };
        if rows.is_empty() {
            write_atomic(&dir.join("metrics.csv"), &to_csv::<EpochRow>(&[])?)?;
        }
        self.write_diagnostics(&dir)?;
        write_atomic(&dir.join("summary.csv"), &to_csv(std::slice::from_ref(&summary))?)?;
        Ok(RunOutcome { summary, epochs: rows, dir })
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

    fn metric(&self, s: &Stats) -> f64 {
        match self.spec.task.metric() {
            "bpc" => s.mean_loss() / std::f64::consts::LN_2,
            "ppl" => s.mean_loss().exp(),
            _ => 100.0 * (1.0 - s.correct as f64 / s.count.max(1) as f64),
        }
    }

    /// One epoch (or what is left of the step budget). Returns the training stats, the number
    /// of input tokens processed, and whether the loss went non-finite.
    pub fn train_epoch(&mut self, epoch: usize) -> Result<(Stats, usize, bool)> {
        let windows = self.train_windows()?;
        let bar = self.progress(epoch, windows.len());
        let mut stats = Stats::default();
        let mut tokens = 0;
        let t0 = Instant::now();
        let mut state: Option<State<f32>> = None;
        for (i, w) in windows.iter().enumerate() {
            if self.budget_spent() {
                break;
            }
            let (s, n) = match w {
                Window::Lm { start, steps } => {
                    let (x, y) = self.streams.as_ref().unwrap()[0].window(*start, *steps);
                    let (x, y) = (x.to_vec(), y.to_vec());
                    let st = state.take().unwrap_or_else(|| {
                        State::zeros(self.spec.model.layers, self.spec.train.batch_size, self.spec.model.hidden)
                    });
                    let s = self.train_step(Input::Tokens(&x), &y, &st);
                    state = Some(self.model.final_state());
                    (s, x.len())
                }
                Window::Images(idx) => {
                    let TaskData::Mnist(m, order) = &self.data else { unreachable!() };
                    let (pixels, labels) = mnist_batch(&m.train, idx, order);
                    let st = self.model.initial_state_train(idx.len(), &mut self.rng);
                    (self.train_step(Input::Pixels(pixels.view()), &labels, &st), pixels.nrows())
                }
            };
            if !s.loss_sum.is_finite() {
                if let Some(b) = bar {
                    b.abandon();
                }
                return Ok((stats, tokens, true));
            }
            stats.add(s);
            tokens += n;
            if let Some(b) = &bar {
                b.set_position(i as u64 + 1);
                b.set_message(format!(
                    "loss {:.4}  {:.0} tok/s",
                    stats.mean_loss(),
                    tokens as f64 / t0.elapsed().as_secs_f64()
                ));
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok((stats, tokens, false))
    }

    /// Forward, backward, clip, update: one optimizer step on one window.
    fn train_step(&mut self, input: Input<f32>, targets: &[u32], state: &State<f32>) -> Stats {
        self.model.zero_grad();
        let stats = self.model.forward(input, targets, state, true, &mut self.rng);
        if !stats.loss_sum.is_finite() {
            return stats;
        }
        self.model.backward(input);
        self.record_diagnostics();
        let mut params = self.model.params_mut();
        let norm = clip_grad_norm(&mut params, self.spec.train.clip);
        if !norm.is_finite() {
            return Stats { loss_sum: f64::NAN, ..stats };
        }
        self.opt.step(&mut params, self.lr_latent, self.lr_other);
        self.step += 1;
        self.refresh_curvature();
        stats
    }

    /// λ rows and gradient-norm traces of the window just run, at the configured intervals
    /// (`step` is the number of updates made before this window: 0 is the initial model).
    fn record_diagnostics(&mut self) {
        let (le, ge) = self.diag_every;
        if le > 0 && self.step % le == 0 {
            let rows = self.diag.lambda_rows(&self.model, self.step, self.epoch);
            self.lambda_rows.extend(rows);
        }
        if ge > 0 && self.step % ge == 0 {
            for (layer, norms) in self.model.grad_norms().into_iter().enumerate() {
                for (t, &g) in norms.iter().enumerate() {
                    self.grad_rows.push(GradNormRow { step: self.step, epoch: self.epoch, layer, t, grad_norm: g });
                }
            }
        }
    }

    fn write_diagnostics(&self, dir: &Path) -> Result<()> {
        if self.spec.diagnostics.enabled {
            write_atomic(&dir.join("lambda.csv"), &to_csv_or_header(&self.lambda_rows, LAMBDA_HEADER)?)?;
            write_atomic(
                &dir.join("grad_norm.csv"),
                &to_csv_or_header(&self.grad_rows, "step,epoch,layer,t,grad_norm\n")?,
            )?;
        }
        Ok(())
    }

    /// lab/lat read d = √v + 1e-8 from Adam's raw second moment of each latent weight.
    fn refresh_curvature(&mut self) {
        if !matches!(self.spec.model.quantizer, Quantizer::Lab | Quantizer::Lat) || self.opt.v.is_empty() {
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

    fn train_windows(&mut self) -> Result<Vec<Window>> {
        Ok(match &self.data {
            TaskData::Lm(_) => {
                let s = &self.streams.as_ref().unwrap()[0];
                s.windows(self.spec.train.bptt).map(|(start, steps)| Window::Lm { start, steps }).collect()
            }
            TaskData::Mnist(m, _) => {
                let mut idx: Vec<usize> = (0..m.train.len()).collect();
                idx.shuffle(&mut self.rng);
                idx.chunks(self.spec.train.batch_size).map(|c| Window::Images(c.to_vec())).collect()
            }
        })
    }

    /// Mean loss over a split: carried state, dropout off, batch `eval_batch_size`.
    pub fn evaluate(&mut self, split: Split) -> Stats {
        let eb = self.spec.train.eval_batch_size;
        let mut total = Stats::default();
        match &self.data {
            TaskData::Lm(_) => {
                let streams = &self.streams.as_ref().unwrap()[if split == Split::Valid { 1 } else { 2 }];
                let mut state = State::zeros(self.spec.model.layers, eb, self.spec.model.hidden);
                for (start, steps) in streams.windows(self.spec.train.bptt) {
                    let (x, y) = streams.window(start, steps);
                    total.add(self.model.forward(Input::Tokens(x), y, &state, false, &mut self.rng));
                    state = self.model.final_state();
                }
            }
            TaskData::Mnist(m, order) => {
                let set = if split == Split::Valid { &m.valid } else { &m.test };
                let idx: Vec<usize> = (0..set.len()).collect();
                for chunk in idx.chunks(eb) {
                    let (pixels, labels) = mnist_batch(set, chunk, order);
                    let state = self.model.initial_state(chunk.len());
                    total.add(self.model.forward(Input::Pixels(pixels.view()), &labels, &state, false, &mut self.rng));
                }
            }
        }
        total
    }

    fn progress(&self, epoch: usize, len: usize) -> Option<ProgressBar> {
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
        Some(bar)
    }
}

const LAMBDA_HEADER: &str = "step,epoch,layer,lambda1,lambda2,gamma1,norm_i,g_i,sigma_i,norm_f,g_f,sigma_f,norm_a,g_a,sigma_a,norm_o,g_o,sigma_o\n";

/// CSV of `rows`, or just the header when there are none (serde writes headers from a row).
fn to_csv_or_header<R: serde::Serialize>(rows: &[R], header: &str) -> Result<Vec<u8>> {
    if rows.is_empty() { Ok(header.as_bytes().to_vec()) } else { to_csv(rows) }
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

/// Pixels of images `idx` as a (784·B, 1) time-major column (row t·B + b = pixel order[t] of
/// image b, scaled to [0, 1]) and their labels.
fn mnist_batch(set: &MnistSplit, idx: &[usize], order: &[usize]) -> (Array2<f32>, Vec<u32>) {
    let b = idx.len();
    let mut x = Array2::zeros((PIXELS * b, 1));
    for (t, &p) in order.iter().enumerate() {
        for (j, &i) in idx.iter().enumerate() {
            x[[t * b + j, 0]] = set.images[i * PIXELS + p] as f32 / 255.0;
        }
    }
    (x, idx.iter().map(|&i| set.labels[i] as u32).collect())
}
