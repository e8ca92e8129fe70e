//! The epoch loop (docs/SPEC.md §3): truncated BPTT with carried, detached state for language
//! models, whole 784-step sequences for MNIST; evaluation on valid and test after every epoch;
//! checkpoints, resume, interruption and divergence. The test figure reported is the one at
//! the epoch with the best validation loss.

use std::path::Path;
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_pcg::Pcg64Mcg;

use crate::data::task::mnist_batch;
use crate::data::{Streams, TaskData};
use crate::error::Result;
use crate::model::{Input, Model, State};
use crate::nn::Stats;
use crate::run_dir::{EpochRow, GradNormRow, LambdaRow, Metric, RunDir, Status, Summary};
use crate::spec::Spec;
use crate::train::Optimizer;
use crate::train::observer::{Divergence, Observer, Silent};
use crate::train::resume::{self, Provisional, RunState};
use crate::train::step::{forward_backward, update};

/// How a finished (or stopped) run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub summary: Summary,
    pub epochs: Vec<EpochRow>,
    pub dir: RunDir,
}

/// How an epoch's training ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochEnd {
    /// Every window of the epoch has been trained.
    Done,
    /// The step budget ran out before the epoch's last window.
    Budget,
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
    pub model: Model<f32>,
    data: TaskData,
    opt: Optimizer,
    /// Where the run stands (step, epoch, learning rates, statistics, metrics so far).
    state: RunState,
    observer: Box<dyn Observer>,
    /// Language models: train, valid, test cut into streams once.
    streams: Option<[Streams; 3]>,
    /// Language models: the state carried from the last window into the next.
    carried: Option<State<f32>>,
    lambda_rows: Vec<LambdaRow>,
    grad_rows: Vec<GradNormRow>,
    /// (λ every, gradient trace every) in steps, 0 = off.
    diag_every: (u64, u64),
    /// A mean training loss above this (nats) counts as divergence.
    max_loss: f64,
    /// The run directory while `run` is going.
    dir: Option<RunDir>,
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
        spec.check_host(&spec.name)?;
        let data = TaskData::load(&spec)?;
        let streams = match &data {
            // Fails now, before any file is written, if a split cannot fill its streams.
            TaskData::Lm(c) => Some([
                Streams::new(&c.train, spec.train.batch_size, &c.sources[0], "train.batch_size")?,
                Streams::new(&c.valid, spec.train.eval_batch_size, &c.sources[1], "train.eval_batch_size")?,
                Streams::new(&c.test, spec.train.eval_batch_size, &c.sources[2], "train.eval_batch_size")?,
            ]),
            TaskData::Mnist(..) => None,
        };
        crate::size::check_memory(&spec, data.vocab())?;
        let model = Model::new(&spec.model_config(data.vocab()), &mut Pcg64Mcg::seed_from_u64(spec.seed));
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
            opt: Optimizer::new(spec.train.optimizer),
            state: RunState::fresh(&spec),
            spec,
            data,
            model,
            observer: Box::new(Silent),
            streams,
            carried: None,
            lambda_rows: Vec::new(),
            grad_rows: Vec::new(),
            diag_every,
            max_loss,
            dir: None,
        })
    }

    /// Evaluate (or sample from) `model` instead of the freshly initialised one: a loaded
    /// checkpoint's or a packed export's, built for this spec.
    pub fn with_model(mut self, model: Model<f32>) -> Trainer {
        self.model = model;
        self
    }

    /// Report progress to `observer` (by default nobody watches).
    pub fn with_observer(mut self, observer: Box<dyn Observer>) -> Trainer {
        self.observer = observer;
        self
    }

    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// Training statistics of the epoch in progress (or the last one trained).
    pub fn epoch_stats(&self) -> Stats {
        self.state.epoch_stats
    }

    /// λ rows recorded so far.
    pub fn lambda_rows(&self) -> &[LambdaRow] {
        &self.lambda_rows
    }

    /// Gradient-norm traces recorded so far.
    pub fn grad_rows(&self) -> &[GradNormRow] {
        &self.grad_rows
    }

    pub fn metric(&self) -> Metric {
        Metric::for_task(self.spec.task)
    }

    /// Train for the spec's budget, writing the run directory `<out>/<name>/` (`run_dir`).
    /// With `resume`, continue from the run's checkpoint if there is one.
    pub fn run(&mut self, out_root: &Path, resume: bool) -> Result<RunOutcome> {
        let dir = RunDir::new(out_root, &self.spec.name);
        dir.create()?;
        let _lock = dir.lock()?;
        if resume && dir.checkpoint().exists() {
            self.restore(&dir)?;
        } else {
            dir.clear_for_fresh_run();
        }
        self.dir = Some(dir.clone());
        dir.write_spec(&self.spec)?;
        // Every CSV has its header from the start, also if the run stops before an epoch ends.
        dir.write_metrics(&self.state.rows)?;
        self.write_diagnostics(&dir)?;
        let start = Instant::now();
        let first = self.state.epoch.max(1);
        let mut status = Status::Ok;
        for epoch in first..=self.spec.train.epochs {
            if self.state.epoch != epoch {
                self.state.epoch = epoch;
                self.state.window = 0;
            }
            if self.state.window == 0 {
                self.state.epoch_stats = Stats::default();
                self.state.epoch_tokens = 0;
                self.state.epoch_secs = 0.0;
            }
            let lr_this_epoch = self.state.lr.latent;
            let complete = match self.train_epoch(epoch)? {
                EpochEnd::Interrupted => {
                    status = Status::Interrupted;
                    self.save_checkpoint(&dir, start)?;
                    break;
                }
                EpochEnd::Diverged => {
                    status = Status::Diverged;
                    break;
                }
                EpochEnd::Done => true,
                EpochEnd::Budget => false,
            };
            let valid = self.evaluate(Split::Valid);
            let test = self.evaluate(Split::Test);
            let metric = self.metric();
            let s = &self.state;
            let row = EpochRow {
                epoch,
                step: s.step,
                lr: lr_this_epoch,
                train_loss: s.epoch_stats.mean_loss(),
                valid_loss: valid.mean_loss(),
                valid_metric: metric.value(&valid),
                test_loss: test.mean_loss(),
                test_metric: metric.value(&test),
                tokens_per_s: s.epoch_tokens as f64 / s.epoch_secs.max(1e-9),
                wall_s: s.wall_before + start.elapsed().as_secs_f64(),
            };
            self.observer.epoch_evaluated(&self.spec.name, &row, metric);
            if !row.valid_loss.is_finite() {
                status = Status::Diverged;
                self.state.diverged_step = Some(self.state.step);
            }
            let improved = self.state.best_row().is_none_or(|b| row.valid_loss < b.valid_loss);
            if !complete {
                // A larger budget will take this evaluation back (`restore`) and train on.
                self.state.provisional = Some(Provisional { best_before: self.state.best });
            }
            self.state.rows.push(row);
            if improved && status == Status::Ok {
                if !complete && dir.best().exists() {
                    std::fs::rename(dir.best(), dir.file(RunDir::BEST_PREVIOUS))
                        .map_err(|e| crate::error::io_err(&dir.best(), e))?;
                }
                self.state.best = Some(self.state.rows.len() - 1);
                resume::save_model(&dir.best(), &self.spec, &mut self.model, self.state.step, self.state.epoch)?;
            }
            dir.write_metrics(&self.state.rows)?;
            self.write_diagnostics(&dir)?;
            if status != Status::Ok {
                break;
            }
            if !complete {
                // Stopped mid-epoch by the step budget: the checkpoint keeps the position.
                self.save_checkpoint(&dir, start)?;
                break;
            }
            // After every complete epoch, the last included, so that a larger epoch budget
            // continues exactly as a run with that budget from scratch.
            self.state.lr.end_of_epoch(&self.spec.train, epoch, improved);
            self.state.epoch = epoch + 1;
            self.state.window = 0;
            self.save_checkpoint(&dir, start)?;
            if self.budget_spent() {
                break;
            }
        }
        let summary = self.summary(status, start);
        if self.state.rows.is_empty() {
            dir.write_metrics(&[])?;
        }
        self.write_diagnostics(&dir)?;
        dir.write_summary(&summary)?;
        self.dir = None;
        Ok(RunOutcome { summary, epochs: self.state.rows.clone(), dir })
    }

    fn summary(&self, status: Status, start: Instant) -> Summary {
        let s = &self.state;
        let b = s.best_row();
        Summary {
            name: self.spec.name.clone(),
            task: self.spec.task,
            layers: self.spec.model.layers,
            hidden: self.spec.model.hidden,
            quantizer: self.spec.model.quantizer,
            normalization: self.spec.model.normalization,
            epochs_run: s.rows.len(),
            steps: s.step,
            best_epoch: b.map_or(0, |r| r.epoch),
            metric: self.metric(),
            valid_metric: b.map_or(f64::NAN, |r| r.valid_metric),
            test_metric: b.map_or(f64::NAN, |r| r.test_metric),
            test_loss_nats: b.map_or(f64::NAN, |r| r.test_loss),
            size_kb: crate::size::size_kb(&self.spec, self.data.vocab()),
            train_tokens_per_s: s.total_tokens as f64 / s.total_secs.max(1e-9),
            wall_s: s.wall_before + start.elapsed().as_secs_f64(),
            status,
            diverged_step: s.diverged_step,
            cell: self.spec.model.cell,
        }
    }

    fn budget_spent(&self) -> bool {
        self.spec.train.max_steps > 0 && self.state.step >= self.spec.train.max_steps as u64
    }

    /// Train the windows of `epoch` from `state.window` on, until the epoch or the step
    /// budget ends, a stop is requested, or the loss diverges. Statistics accumulate in
    /// `state`; checkpoints are written every `train.checkpoint_every` steps.
    pub fn train_epoch(&mut self, epoch: usize) -> Result<EpochEnd> {
        self.state.epoch = epoch;
        let windows = self.train_windows(epoch);
        let budget = (self.spec.train.max_steps > 0).then_some(self.spec.train.max_steps as u64);
        self.observer.epoch_started(epoch, self.spec.train.epochs, windows.len(), self.state.window, budget);
        let t0 = Instant::now();
        let (secs_before, total_secs_before) = (self.state.epoch_secs, self.state.total_secs);
        let mut end = EpochEnd::Done;
        for (i, w) in windows.iter().enumerate().skip(self.state.window) {
            if self.budget_spent() {
                end = EpochEnd::Budget;
                break;
            }
            if crate::signal::interrupted() {
                end = EpochEnd::Interrupted;
                break;
            }
            let mut rng = derived_rng(self.spec.seed, RNG_STEP, self.state.step);
            let (outcome, n) = match w {
                Window::Lm { start, steps } => {
                    let (x, y) = self.streams.as_ref().unwrap()[0].window(*start, *steps);
                    let (x, y) = (x.to_vec(), y.to_vec());
                    let st = match self.carried.take() {
                        Some(s) if i > 0 => s,
                        _ => self.model.zero_state(self.spec.train.batch_size),
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
            let ceiling = self.max_loss;
            let checked = outcome.and_then(|s| {
                if s.mean_loss() <= ceiling {
                    Ok(s)
                } else {
                    Err(Divergence::Loss { mean_loss: s.mean_loss(), ceiling })
                }
            });
            let s = match checked {
                Ok(s) => s,
                Err(why) => {
                    self.state.diverged_step = Some(self.state.step);
                    self.observer.diverged(&self.spec.name, self.state.step, why);
                    end = EpochEnd::Diverged;
                    break;
                }
            };
            let st = &mut self.state;
            st.epoch_stats.add(s);
            st.epoch_tokens += n;
            st.total_tokens += n;
            st.window = i + 1;
            st.epoch_secs = secs_before + t0.elapsed().as_secs_f64();
            st.total_secs = total_secs_before + t0.elapsed().as_secs_f64();
            self.observer.window_trained(&self.state);
            let every = self.spec.train.checkpoint_every as u64;
            if every > 0
                && self.state.step.is_multiple_of(every)
                && self.state.window < windows.len()
                && let Some(dir) = self.dir.clone()
            {
                self.save_checkpoint(&dir, Instant::now())?;
            }
        }
        self.observer.epoch_trained();
        Ok(end)
    }

    /// Forward, backward, clip, update: one optimizer step on one window, or why none was taken
    /// (a non-finite loss, or a finite loss whose gradient is not).
    fn train_step(
        &mut self,
        input: Input<f32>,
        targets: &[u32],
        state: &State<f32>,
        rng: &mut Pcg64Mcg,
    ) -> std::result::Result<Stats, Divergence> {
        // λ1 reads the forward's caches (gate activations, states): between forward and backward
        let (le, step, epoch) = (self.diag_every.0, self.state.step, self.state.epoch);
        let (power, lambda_rows) = (&mut self.state.power_iteration, &mut self.lambda_rows);
        let stats = forward_backward(&mut self.model, input, targets, state, rng, |model| {
            if le > 0 && step.is_multiple_of(le) {
                lambda_rows.extend(power.lambda_rows(model, step, epoch));
            }
        });
        if !stats.loss_sum.is_finite() {
            return Err(Divergence::Loss { mean_loss: stats.mean_loss(), ceiling: self.max_loss });
        }
        self.record_grad_norms();
        if !update(&mut self.model, &mut self.opt, self.spec.train.clip, self.state.lr) {
            return Err(Divergence::Gradient { mean_loss: stats.mean_loss() });
        }
        self.state.step += 1;
        Ok(stats)
    }

    /// Gradient-norm traces of the window just run, at the configured interval (`step` is the
    /// number of updates made before this window: 0 is the initial model); its λ rows were
    /// taken between its forward and backward (`train_step`).
    fn record_grad_norms(&mut self) {
        let ge = self.diag_every.1;
        let (step, epoch) = (self.state.step, self.state.epoch);
        if ge > 0 && step.is_multiple_of(ge) {
            for (layer, norms) in self.model.grad_norms().into_iter().enumerate() {
                for (t, &grad_norm) in norms.iter().enumerate() {
                    self.grad_rows.push(GradNormRow { step, epoch, layer, t, grad_norm });
                }
            }
        }
    }

    fn write_diagnostics(&self, dir: &RunDir) -> Result<()> {
        if self.spec.diagnostics.enabled {
            dir.write_diagnostics(&self.lambda_rows, &self.grad_rows)?;
        }
        Ok(())
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
                let mut state = self.model.zero_state(eb);
                let windows = streams.num_windows(self.spec.train.bptt);
                self.observer.evaluating(split, 0, windows);
                for (i, (start, steps)) in streams.windows(self.spec.train.bptt).enumerate() {
                    let (x, y) = streams.window(start, steps);
                    total.add(self.model.forward(Input::Tokens(x), y, &state, false, &mut unused));
                    state = self.model.final_state();
                    self.observer.evaluating(split, i + 1, windows);
                }
            }
            TaskData::Mnist(m, order) => {
                let set = if split == Split::Valid { &m.valid } else { &m.test };
                let idx: Vec<usize> = (0..set.len()).collect();
                let batches = set.len().div_ceil(eb);
                self.observer.evaluating(split, 0, batches);
                for (i, chunk) in idx.chunks(eb).enumerate() {
                    let (pixels, labels) = mnist_batch(set, chunk, order);
                    let state = self.model.initial_state(chunk.len());
                    total.add(self.model.forward(Input::Pixels(pixels.view()), &labels, &state, false, &mut unused));
                    self.observer.evaluating(split, i + 1, batches);
                }
            }
        }
        total
    }

    /// Load the model's tensors from a checkpoint or best.safetensors of this spec.
    pub fn load_model(&mut self, path: &Path) -> Result<()> {
        let mut ck = crate::io::checkpoint::read(path)?;
        resume::load_model(&mut ck, &self.spec, &mut self.model)
    }

    fn save_checkpoint(&mut self, dir: &RunDir, start: Instant) -> Result<()> {
        let mut state = self.state.clone();
        state.wall_before += start.elapsed().as_secs_f64();
        resume::save_checkpoint(
            &dir.checkpoint(),
            &self.spec,
            &mut self.model,
            &state,
            self.opt.t,
            self.carried.as_ref(),
        )?;
        self.write_diagnostics(dir)
    }

    /// Continue from the run's checkpoint: the model, the optimizer, the carried state, the
    /// position, and the diagnostics rows written before it (later ones are recomputed).
    fn restore(&mut self, dir: &RunDir) -> Result<()> {
        let path = dir.checkpoint();
        let (mut state, optimizer_t, carried) =
            resume::restore(&path, &self.spec, &mut self.model, self.streams.is_some())?;
        // A step budget's last evaluation is taken back: training goes on from where it stopped.
        if let Some(p) = state.provisional.take() {
            let was_best = state.best == Some(state.rows.len() - 1);
            state.rows.pop();
            state.best = p.best_before;
            if was_best {
                let previous = dir.file(RunDir::BEST_PREVIOUS);
                match previous.exists() {
                    true => std::fs::rename(&previous, dir.best()).map_err(|e| crate::error::io_err(&previous, e))?,
                    false => {
                        let _ = std::fs::remove_file(dir.best());
                    }
                }
            }
        }
        self.state = state;
        self.opt.t = optimizer_t;
        self.carried = carried;
        let step = self.state.step;
        self.lambda_rows = dir.read_lambda()?.into_iter().filter(|r| r.step < step).collect();
        self.grad_rows = dir.read_grad_norms()?.into_iter().filter(|r| r.step < step).collect();
        self.observer.resumed(&self.spec.name, &path, &self.state);
        Ok(())
    }
}
