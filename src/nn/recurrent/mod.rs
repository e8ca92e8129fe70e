//! A recurrent layer over a BPTT window: one layer struct (`layer.rs`: weights, quantization,
//! the window-batched GEMMs), the input product's normalizer (`input_norm.rs`), one time loop (`steps.rs`: the
//! per-step recurrent product and its normalizer, then the cell, on one or two halves of the
//! batch), and the cell kernels behind the `Cell` trait (`lstm.rs`, `gru.rs`).

mod cache;
mod exchange;
mod gru;
mod input_norm;
mod layer;
mod lstm;
mod steps;

pub use cache::{Cache, Grads};
pub(crate) use exchange::{Exchange, Peer};
pub use gru::Gru;
pub use layer::{Frozen, FrozenMatrix, Layer, LayerInput};
pub use lstm::Lstm;
pub(crate) use steps::StepsGrad;

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::names::named_enum;
use crate::tensor::Real;

named_enum! {
    /// The recurrent cell of every layer (`[model] cell`).
    pub enum CellKind {
        Lstm = "lstm",
        Gru = "gru",
    }
}

impl CellKind {
    /// Gate blocks per layer: the rows of W_x and W_h are G·H.
    pub fn gates(self) -> usize {
        match self {
            CellKind::Lstm => Lstm::GATES,
            CellKind::Gru => Gru::GATES,
        }
    }

    pub fn carries_c(self) -> bool {
        match self {
            CellKind::Lstm => Lstm::CARRIES_C,
            CellKind::Gru => Gru::CARRIES_C,
        }
    }

    /// Width of the cell's per-step buffer `aux` for `hidden` units (0 for the LSTM).
    pub fn aux_width(self, hidden: usize) -> usize {
        let keeps = match self {
            CellKind::Lstm => Lstm::AUX,
            CellKind::Gru => Gru::AUX,
        };
        if keeps { hidden } else { 0 }
    }

    pub fn product_apart(self) -> bool {
        match self {
            CellKind::Lstm => Lstm::PRODUCT_APART,
            CellKind::Gru => Gru::PRODUCT_APART,
        }
    }

    /// The gates' letters, in the order of their blocks (for diagnostics).
    pub fn gate_names(self) -> &'static [&'static str] {
        match self {
            CellKind::Lstm => &["i", "f", "a", "o"],
            CellKind::Gru => &["r", "z", "n"],
        }
    }
}

/// One recurrent cell: how a step's gate pre-activations become the new state, and back.
/// The time loop calls it once per step on some rows of the batch, after the recurrent product
/// W_h·h_{t−1} (and its normalizer) has been added to the input side's pre-activations — or,
/// for a cell that takes the product apart (`PRODUCT_APART`), computed into `rec`.
pub trait Cell {
    /// Gate blocks of H rows each in W_x, W_h and the bias (LSTM: i, f, a, o; GRU: r, z, n).
    const GATES: usize;
    /// The cell keeps a state c besides h (the LSTM's cell state).
    const CARRIES_C: bool;
    /// The recurrent product reaches the cell apart from the input side, with its own bias over
    /// the last gate block (the GRU's reset gate multiplies W_hn·h + b_hn), and h_{t−1} also
    /// reaches h_t directly: the cell writes that direct part of ∂L/∂h_{t−1}, and the product's
    /// part is added to it.
    const PRODUCT_APART: bool;
    /// Keeps a per-step buffer (`aux`) for the backward. The LSTM keeps none: its backward
    /// recomputes tanh(c_t) from c_t, the same kernel on the same value.
    const AUX: bool;
    fn forward<T: Real>(s: StepRows<'_, T>, hidden: usize);
    /// Returns Σ (∂L/∂h_t)² over the rows, in f64.
    fn backward<T: Real>(s: StepGradRows<'_, T>, hidden: usize) -> f64;
}

/// ∂L/∂h_t from above, for the steps of a window: at every step, (T·B, H); or, for a classifier
/// that reads only the last h (sequential MNIST), at the last step alone, (B, H), zero at the
/// others — without a (T·B, H) buffer of zeros (31 MB at T = 784, B = 100, H = 100).
#[derive(Clone, Copy)]
pub enum OutputGrad<'a, T> {
    EveryStep(ArrayView2<'a, T>),
    LastStep(ArrayView2<'a, T>),
}

/// What one forward step of the cell reads and writes, for some rows of the batch.
pub struct StepRows<'a, T> {
    /// The input side's pre-activations on entry (with the recurrent product added, unless the
    /// cell takes it apart), the activations on exit: (rows, G·H).
    pub gates: ArrayViewMut2<'a, T>,
    /// The (normalized) recurrent product, for a cell that takes it apart; empty otherwise.
    pub rec: ArrayView2<'a, T>,
    /// Its bias over the last gate block (the GRU's b_hn); empty otherwise.
    pub rec_bias: &'a [T],
    pub h_prev: ArrayView2<'a, T>,
    pub h: ArrayViewMut2<'a, T>,
    /// The cell state entering the step and the one it leaves (LSTM's c; empty for the GRU).
    pub c_prev: ArrayView2<'a, T>,
    pub c: ArrayViewMut2<'a, T>,
    /// What the backward needs besides the activations, for a cell that keeps it (`Cell::AUX`):
    /// the GRU's u = N(W_hn·h_{t−1}) + b_hn, (rows, H); empty for the LSTM.
    pub aux: ArrayViewMut2<'a, T>,
}

/// What one backward step of the cell reads and writes. On entry `gates` holds the step's
/// activations, `dh` ∂L/∂h_t from the future (recurrent path) and `dc` ∂L/∂c_t from the future;
/// `d_out` adds the gradient from above. The cell overwrites the activations with the
/// pre-activation gradients of the input side, ∂L/∂G_t (the activations of a step are dead once
/// its gradients exist, and the window keeps one (T·B, G·H) buffer instead of two: 125 MB on
/// sequential MNIST), writes those of the recurrent product into `dg_rec` for a cell that takes
/// it apart, leaves ∂L/∂c_{t-1} in `dc`, and — for a cell with a direct path — the direct part
/// of ∂L/∂h_{t−1} in `dh`.
pub struct StepGradRows<'a, T> {
    pub gates: ArrayViewMut2<'a, T>,
    pub h_prev: ArrayView2<'a, T>,
    pub c_prev: ArrayView2<'a, T>,
    /// The cell state the step left (LSTM's c_t; empty for the GRU).
    pub c: ArrayView2<'a, T>,
    pub aux: ArrayView2<'a, T>,
    pub d_out: ArrayView2<'a, T>,
    pub dh: ArrayViewMut2<'a, T>,
    pub dc: ArrayViewMut2<'a, T>,
    pub dg_rec: ArrayViewMut2<'a, T>,
}
