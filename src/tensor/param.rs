//! A trained tensor with its gradient, and the optimizer group it belongs to.

use ndarray::Array2;

use crate::tensor::Real;

/// Which optimizer group a parameter is in: the recipes treat the latent LSTM weights
/// (W_x, W_h of every layer) differently from everything else (lr scale, lr decay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    LatentWeight,
    Other,
}

/// A trained tensor with its gradient. Vectors are stored as 1×n so every parameter has one
/// shape type; names follow the checkpoint naming (`lstm.0.w_x`, `decoder.weight`, …).
#[derive(Clone, Debug)]
pub struct Param<T> {
    pub name: String,
    pub value: Array2<T>,
    pub grad: Array2<T>,
    pub group: Group,
    /// Adam's moments of this tensor, from its first Adam step on (None before it and with
    /// SGD). The loss-aware quantizers read their curvature from the second moment.
    pub moments: Option<Moments<T>>,
}

/// Adam's first and raw (not bias-corrected) second moments of one tensor.
#[derive(Clone, Debug)]
pub struct Moments<T> {
    pub m: Array2<T>,
    pub v: Array2<T>,
}

impl<T: Real> Param<T> {
    pub fn new(name: impl Into<String>, value: Array2<T>, group: Group) -> Self {
        let grad = Array2::zeros(value.dim());
        Param { name: name.into(), value, grad, group, moments: None }
    }
    /// Zero the gradient; a large one in chunks over the threads (the embedding's and the
    /// softmax's of PTB-word are 26 MB each: one thread zeroing them left the other idle).
    pub fn zero_grad(&mut self) {
        const CHUNK: usize = 1 << 16;
        let grad = self.grad.as_slice_mut().expect("gradients are contiguous");
        if crate::tensor::threads() > 1 && grad.len() >= 2 * CHUNK {
            use rayon::prelude::*;
            grad.par_chunks_mut(CHUNK).for_each(|c| c.fill(T::zero()));
        } else {
            grad.fill(T::zero());
        }
    }
}
