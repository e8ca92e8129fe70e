//! A recurrent layer over a BPTT window: one layer struct (`layer.rs`: weights, quantization,
//! the window-batched GEMMs, the input product's normalizer), one time loop (`steps.rs`: the
//! per-step recurrent product and its normalizer, then the cell, on one or two halves of the
//! batch), and the cell kernels behind the `Cell` trait (`lstm.rs`).

mod cache;
mod layer;
mod lstm;
mod steps;

pub use cache::{Cache, Grads};
pub use layer::{Layer, LayerInput};
pub use lstm::Lstm;

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::tensor::Real;

/// One recurrent cell: how a step's gate pre-activations become the new state, and back.
/// The time loop calls it once per step on some rows of the batch, after the recurrent
/// product (and its normalizer) has been added to the input side's pre-activations.
pub trait Cell {
    /// Gate blocks of H rows each in W_x, W_h and the bias (LSTM: i, f, a, o).
    const GATES: usize;
    fn forward<T: Real>(s: StepRows<'_, T>, hidden: usize);
    /// Returns Σ (∂L/∂h_t)² over the rows, in f64.
    fn backward<T: Real>(s: StepGradRows<'_, T>, hidden: usize) -> f64;
}

/// What one forward step of the cell reads and writes, for some rows of the batch.
pub struct StepRows<'a, T> {
    /// Pre-activations on entry, activations on exit: (rows, G·H).
    pub gates: ArrayViewMut2<'a, T>,
    /// The cell state entering the step and the one it leaves (LSTM's c), (rows, H).
    pub c_prev: ArrayView2<'a, T>,
    pub c: ArrayViewMut2<'a, T>,
    /// tanh(c_t), kept for the backward.
    pub tanh_c: ArrayViewMut2<'a, T>,
    pub h: ArrayViewMut2<'a, T>,
}

/// What one backward step of the cell reads and writes. On entry `dh` holds ∂L/∂h_t from the
/// future (recurrent path) and `dc` ∂L/∂c_t from the future; `d_out` adds the gradient from
/// above. The cell writes the pre-activation gradients into `dg` and leaves ∂L/∂c_{t-1} in `dc`.
pub struct StepGradRows<'a, T> {
    pub gates: ArrayView2<'a, T>,
    pub c_prev: ArrayView2<'a, T>,
    pub tanh_c: ArrayView2<'a, T>,
    pub d_out: ArrayView2<'a, T>,
    pub dh: ArrayViewMut2<'a, T>,
    pub dc: ArrayViewMut2<'a, T>,
    pub dg: ArrayViewMut2<'a, T>,
}
