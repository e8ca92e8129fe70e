//! What a checkpoint holds, written in one place and read back in the same place.
//!
//! A training checkpoint (`checkpoint.safetensors`) holds the model's tensors (latent weights,
//! biases, normalization gains/biases, batch-norm running statistics, embedding, softmax layer,
//! MNIST h0/c0), Adam's moments as `optimizer.m.<name>` / `optimizer.v.<name>`, the carried
//! state mid-epoch as `state.h.<layer>` / `state.c.<layer>`, and in its metadata the resolved
//! spec and the `RunState` (position, learning rates, the partial epoch's statistics, the
//! metrics so far) as one TOML document. `best.safetensors` holds the model alone. Randomness is
//! derived from (seed, step) and (seed, epoch), so no generator state needs saving.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::bail;
use crate::diag::Diagnostics;
use crate::error::{Error, Result};
use crate::io::checkpoint::{self, Loaded};
use crate::io::read_csv;
use crate::model::{Model, State};
use crate::nn::Stats;
use crate::run_dir::EpochRow;
use crate::spec::Spec;
use crate::tensor::{Group, Moments};
use crate::train::schedule::LearningRates;

/// Where a run stands: everything besides the tensors that writing its files and resuming it
/// exactly need. Saved and restored whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps taken.
    pub step: u64,
    /// The epoch in progress (1-based) and the windows of it already trained.
    pub epoch: usize,
    pub window: usize,
    pub lr: LearningRates,
    /// Training statistics, input tokens and seconds of the epoch in progress.
    pub epoch_stats: Stats,
    pub epoch_tokens: usize,
    pub epoch_secs: f64,
    /// Input tokens and training seconds of the whole run (all sessions).
    pub total_tokens: usize,
    pub total_secs: f64,
    /// Wall seconds spent in earlier sessions (at a save: up to the save).
    pub wall_before: f64,
    /// metrics.csv so far.
    pub rows: Vec<EpochRow>,
    /// Index into `rows` of the best validation loss.
    pub best: Option<usize>,
    /// The last row is the evaluation a step budget ended the run with, mid-epoch: a larger
    /// budget takes it back and trains on, as a run with that budget from scratch would.
    #[serde(default)]
    pub provisional: Option<Provisional>,
    /// The λ diagnostics' power-iteration vectors (warm starts).
    #[serde(default)]
    pub power_iteration: Diagnostics,
    #[serde(skip)]
    pub diverged_step: Option<u64>,
}

/// What taking back a step budget's last evaluation restores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provisional {
    /// `best` before that evaluation.
    pub best_before: Option<usize>,
}

impl RunState {
    /// The state of a run about to start: step 0, the spec's learning rates.
    pub fn fresh(spec: &Spec) -> RunState {
        RunState { lr: LearningRates::initial(&spec.train), ..RunState::default() }
    }

    /// The best epoch's row, if any epoch has been evaluated.
    pub fn best_row(&self) -> Option<&EpochRow> {
        self.best.map(|i| &self.rows[i])
    }

    fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::new(format!("run state: {e}")))
    }

    /// The state in a checkpoint: one TOML document (this format), or the flat keys of the
    /// first checkpoint format, so that runs checkpointed by earlier versions resume too.
    fn from_checkpoint(ck: &Loaded) -> Result<RunState> {
        if let Ok(text) = ck.meta(RUN_STATE) {
            return toml::from_str(text).map_err(|e| Error::new(format!("{}: metadata `{RUN_STATE}`: {e}", ck.path)));
        }
        let best: String = ck.meta("best")?.to_string();
        Ok(RunState {
            step: ck.parse("step")?,
            epoch: ck.parse("epoch")?,
            window: ck.parse("window")?,
            lr: LearningRates { latent: ck.parse("lr_latent")?, other: ck.parse("lr_other")? },
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
            rows: read_csv(ck.meta("metrics")?.as_bytes(), &format!("{}: metrics", ck.path))?,
            best: if best.is_empty() {
                None
            } else {
                Some(best.parse().map_err(|_| Error::new(format!("{}: bad `best`", ck.path)))?)
            },
            provisional: None,
            power_iteration: Diagnostics::default(),
            diverged_step: None,
        })
    }
}

/// Metadata key of the run state.
const RUN_STATE: &str = "run_state";

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

/// The model alone (best.safetensors): what `qlstm eval` needs to compute what the forward
/// pass computed — for the loss-aware quantizers (lab, lat) that includes the curvature, so the
/// second moments of the latent weights are stored too.
pub fn save_model(path: &Path, spec: &Spec, model: &mut Model<f32>, step: u64, epoch: usize) -> Result<()> {
    let meta = HashMap::from([
        ("spec".to_string(), spec.to_toml()),
        ("step".to_string(), step.to_string()),
        ("epoch".to_string(), epoch.to_string()),
    ]);
    let curvature: Vec<(String, Array2<f32>)> = if spec.model.quantizer.uses_curvature() {
        model
            .params_mut()
            .iter()
            .filter(|p| p.group == Group::LatentWeight)
            .filter_map(|p| Some((format!("optimizer.v.{}", p.name), p.moments.as_ref()?.v.clone())))
            .collect()
    } else {
        Vec::new()
    };
    let mut views = model_views(model);
    views.extend(curvature.iter().map(|(n, v)| (n.clone(), v.view())));
    checkpoint::write(path, &views, meta)
}

/// Everything needed to continue exactly: the model, the optimizer's moments, the carried
/// state (mid-epoch), the spec and the run state.
pub fn save_checkpoint(
    path: &Path,
    spec: &Spec,
    model: &mut Model<f32>,
    state: &RunState,
    optimizer_t: u64,
    carried: Option<&State<f32>>,
) -> Result<()> {
    let meta = HashMap::from([
        ("spec".to_string(), spec.to_toml()),
        ("step".to_string(), state.step.to_string()),
        ("epoch".to_string(), state.epoch.to_string()),
        ("optimizer_t".to_string(), optimizer_t.to_string()),
        (RUN_STATE.to_string(), state.to_toml()?),
    ]);
    let moments: Vec<(String, Moments<f32>)> =
        model.params_mut().iter().filter_map(|p| Some((p.name.clone(), p.moments.clone()?))).collect();
    let mut views = model_views(model);
    for (n, m) in &moments {
        views.push((format!("optimizer.m.{n}"), m.m.view()));
        views.push((format!("optimizer.v.{n}"), m.v.view()));
    }
    if let Some(st) = carried.filter(|_| state.window > 0) {
        for (l, (h, c)) in st.h.iter().zip(&st.c).enumerate() {
            views.push((format!("state.h.{l}"), h.view()));
            if c.ncols() > 0 {
                views.push((format!("state.c.{l}"), c.view()));
            }
        }
    }
    checkpoint::write(path, &views, meta)
}

/// Load the model's tensors from a checkpoint (training or best) written for this spec's
/// model, with the optimizer's moments where the file has them (the second moment alone in
/// best.safetensors: all a loss-aware quantizer reads).
pub fn load_model(ck: &mut Loaded, spec: &Spec, model: &mut Model<f32>) -> Result<()> {
    let theirs = Spec::from_toml_str(ck.meta("spec")?, &ck.path, None, &[])?;
    check_same_model(spec, &theirs, &ck.path)?;
    for (name, slot) in model.named_tensors_mut() {
        let t = ck.take(&name, slot.dim())?;
        slot.assign(&t);
    }
    for p in model.params_mut() {
        let (m, v) = (format!("optimizer.m.{}", p.name), format!("optimizer.v.{}", p.name));
        let dim = p.value.dim();
        p.moments = match ck.tensors.contains_key(&v) {
            true => {
                let m = if ck.tensors.contains_key(&m) { ck.take(&m, dim)? } else { Array2::zeros(dim) };
                Some(Moments { m, v: ck.take(&v, dim)? })
            }
            false => None,
        };
    }
    Ok(())
}

/// Restore a training checkpoint into `model`: returns the run state, the optimizer's step
/// count and the carried state (language models mid-epoch).
pub fn restore(
    path: &Path,
    spec: &Spec,
    model: &mut Model<f32>,
    carries_state: bool,
) -> Result<(RunState, u64, Option<State<f32>>)> {
    let mut ck = checkpoint::read(path)?;
    load_model(&mut ck, spec, model)?;
    let state = RunState::from_checkpoint(&ck)?;
    let optimizer_t: u64 = ck.parse("optimizer_t")?;
    // Moments exist from the first Adam step on (the first format wrote zeros before it).
    if optimizer_t == 0 {
        model.params_mut().into_iter().for_each(|p| p.moments = None);
    }
    let carried = if state.window > 0 && carries_state {
        let b = spec.train.batch_size;
        let mut st = model.zero_state(b);
        for (i, (h, c)) in st.h.iter_mut().zip(st.c.iter_mut()).enumerate() {
            *h = ck.take(&format!("state.h.{i}"), h.dim())?;
            if c.ncols() > 0 {
                *c = ck.take(&format!("state.c.{i}"), c.dim())?;
            }
        }
        Some(st)
    } else {
        None
    };
    Ok((state, optimizer_t, carried))
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
        s.diagnostics = Spec::defaults(s.task).diagnostics;
        s
    };
    let (a, b) = (strip(ours), strip(theirs));
    if a != b {
        let (ta, tb) = (a.to_toml(), b.to_toml());
        let diff: Vec<String> =
            ta.lines().zip(tb.lines()).filter(|(x, y)| x != y).map(|(x, y)| format!("{y} → {x}")).collect();
        bail!(
            "{path}: the checkpoint was written for a different spec ({}); to keep that run, give this one another name (--set name=…) or --out; without --resume this one starts afresh and removes the old run's checkpoints",
            diff.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_state_round_trips_exactly() {
        let s = RunState {
            step: 7,
            epoch: 2,
            window: 3,
            lr: LearningRates { latent: 0.1 + 0.2, other: 1e-300 },
            epoch_stats: Stats { loss_sum: std::f64::consts::PI * 1e5, count: 9, correct: 4 },
            epoch_tokens: 11,
            epoch_secs: 1.0 / 3.0,
            total_tokens: 12,
            total_secs: 2.0 / 3.0,
            wall_before: 5.5,
            rows: vec![EpochRow { epoch: 1, step: 4, lr: 0.002, train_loss: f64::NAN, ..EpochRow::default() }],
            best: Some(0),
            provisional: Some(Provisional { best_before: None }),
            power_iteration: Diagnostics::default(),
            diverged_step: None,
        };
        let back: RunState = toml::from_str(&s.to_toml().unwrap()).unwrap();
        assert!(back.rows[0].train_loss.is_nan());
        let (mut a, mut b) = (s.clone(), back);
        a.rows[0].train_loss = 0.0;
        b.rows[0].train_loss = 0.0;
        assert_eq!(a, b);
    }
}
