//! One optimizer step on one window: the gradient (forward and backward), then clipping and the
//! update. The trainer and the benchmark both take their steps through here.

use rand::Rng;

use crate::model::{Input, Model, State};
use crate::nn::Stats;
use crate::train::schedule::LearningRates;
use crate::train::{Optimizer, clip_grad_norm};

/// The gradient of one window: zero the grads, forward in training mode, `after_forward` on
/// the model the forward left (diagnostics that read its caches, which the backward spends),
/// backward. Both are skipped when the loss is not finite.
pub fn forward_backward<R: Rng>(
    model: &mut Model<f32>,
    input: Input<f32>,
    targets: &[u32],
    state: &State<f32>,
    rng: &mut R,
    after_forward: impl FnOnce(&Model<f32>),
) -> Stats {
    model.zero_grad();
    let stats = model.forward(input, targets, state, true, rng);
    if stats.loss_sum.is_finite() {
        after_forward(model);
        model.backward(input);
    }
    stats
}

/// Clip the gradients to `clip` (global norm) and take an optimizer step; false (and no step)
/// if the gradient is not finite.
pub fn update(model: &mut Model<f32>, opt: &mut Optimizer, clip: f64, lr: LearningRates) -> bool {
    let mut params = model.params_mut();
    let clip = clip_grad_norm(&params, clip);
    if !clip.norm.is_finite() {
        return false;
    }
    opt.step(&mut params, clip, lr.latent, lr.other);
    true
}
