//! What a layer's forward over a window leaves for its backward (`Cache`), and the backward's
//! own buffers (`Grads`). Rows of every window buffer are time-major, n = t·B + b. Buffers are
//! resized only when a shape changes, so steady-state training allocates nothing.

use ndarray::{Array2, ArrayView2, s};

use crate::tensor::{PanelMatrix, Real};

/// Everything forward leaves for backward, plus the window's effective weights.
#[derive(Default)]
pub struct Cache<T> {
    pub(super) steps: usize,
    pub(super) batch: usize,
    /// Effective weights used by this window (after quantization and weight norm), (in, G·H).
    pub(super) wx_t: Array2<T>,
    pub(super) wh_t: Array2<T>,
    /// `wh_t` in column panels for the per-step products (`PanelMatrix`), packed by the
    /// forward where the kernel applies (f32 on AVX-512); empty otherwise.
    pub(super) wh_panels: PanelMatrix,
    /// Quantized (before weight norm) weights, (in, G·H); kept for the weight-norm backward.
    /// Empty without weight norm, where Q(W) is the effective weight itself.
    pub(super) qx_t: Array2<T>,
    pub(super) qh_t: Array2<T>,
    /// lab/lat: the curvature d = √v + 1e-8 of each latent weight, (G·H, in), this window's.
    pub(super) d_x: Array2<T>,
    pub(super) d_h: Array2<T>,
    /// Gate activations (LSTM: σ(i), σ(f), tanh(a), σ(o); GRU: r, z, n): (T·B, G·H). The
    /// backward overwrites them step by step with ∂L/∂G, the gradients of the input side's
    /// pre-activations, which the window-batched weight gradients then read
    /// (`gates_hold_grads`).
    pub(super) gates: Array2<T>,
    pub(super) gates_hold_grads: bool,
    /// h_{-1}, h_0 … h_{T-1}: ((T+1)·B, H); likewise the LSTM's cell state c (width 0 for the
    /// GRU, which has none).
    pub(super) hs: Array2<T>,
    pub(super) cs: Array2<T>,
    /// The cell's own per-step buffer, for a cell that keeps one (`Cell::AUX`): the GRU's
    /// u = N(W_hn·h) + b_hn, (T·B, H); (T·B, 0) for the LSTM, whose backward recomputes tanh(c_t).
    pub(super) aux: Array2<T>,
    /// The GRU's recurrent product of a step (scratch), (B, G·H).
    pub(super) rec: Array2<T>,
    /// Layer/batch norm only: a step's raw product (scratch, two steps' rows), the normalized x̂
    /// and 1/σ of each product (x: every step, or scratch where x̂_x is recomputed, see
    /// `input_norm.rs`; h: every step), 1/σ laid out as `Normalizer::rstd_rows` says.
    pub(super) z: Array2<T>,
    pub(super) xhat_x: Array2<T>,
    pub(super) rstd_x: Array2<T>,
    /// Where backward finds x̂_x (every step kept, recomputed, or a table of W_x's rows), and
    /// what the forward ran with (train: batch or running statistics; t0: the first step's
    /// in-window index).
    pub(super) xhat_x_source: super::input_norm::XhatX,
    /// With `XhatX::Table`: γ ⊙ x̂ + β and 1/σ of each row of W_x (x̂ itself is in `xhat_x`).
    pub(super) table_x: Array2<T>,
    pub(super) rstd_table_x: Array2<T>,
    /// With `XhatX::Levels`: the window's distinct input values, their products W_x·v
    /// ((levels, G·H), whose x̂ is in `xhat_x`), and each row's index among them (T·B).
    pub(super) levels: Vec<T>,
    pub(super) level_z: Array2<T>,
    pub(super) level_ids: Vec<u32>,
    pub(super) train: bool,
    pub(super) t0: usize,
    /// x̂ of the recurrent product, (T·B, G·H); the backward overwrites it step by step with
    /// ∂L/∂z_h, the raw product's gradient, which the window's dW_h reads, and then with N_x's
    /// ∂L/∂z_x for dW_x (so no window-sized gradient buffer of its own).
    pub(super) xhat_h: Array2<T>,
    pub(super) rstd_h: Array2<T>,
    /// Batch norm of W_h·h split over two threads in training: each step's μ and σ², (T, 2·G·H),
    /// applied to the running statistics after the window.
    pub(super) bn_stats_h: Array2<T>,
    /// The same for N_x in training (`input_norm.rs`), (T, 2·G·H); where batch norm's x̂_x is
    /// recomputed (`input_norm::XhatX::Recomputed`) also in evaluation, whose μ half holds the
    /// running mean (`mean_x`); 1/σ is in `rstd_x`.
    pub(super) bn_stats_x: Array2<T>,
}

/// The μ half of per-step batch statistics (T, 2·G·H) laid out as `bn_stats_x`: (T, G·H).
pub(super) fn means<T>(stats: &Array2<T>) -> ArrayView2<'_, T> {
    stats.slice(s![.., ..stats.ncols() / 2])
}

impl<T: Real> Cache<T> {
    /// Each step's μ of N_x's batch norm where the time loop applies it, (T, G·H).
    pub(super) fn mean_x(&self) -> ArrayView2<'_, T> {
        means(&self.bn_stats_x)
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The window's outputs h_0 … h_{T-1}, (T·B, H).
    pub fn output(&self) -> ArrayView2<'_, T> {
        self.hs.slice(s![self.batch.., ..])
    }

    /// Final state (h_{T-1}, c_{T-1}), (B, H) each: carried into the next window.
    pub fn final_state(&self) -> (ArrayView2<'_, T>, ArrayView2<'_, T>) {
        let n = self.steps * self.batch;
        (self.hs.slice(s![n.., ..]), self.cs.slice(s![n.., ..]))
    }

    /// The h entering step t (h_{t−1}), (B, H).
    pub fn h_in(&self, t: usize) -> ArrayView2<'_, T> {
        self.hs.slice(s![t * self.batch..(t + 1) * self.batch, ..])
    }

    /// The gate activations of the window, (T·B, G·H): between a forward and its backward
    /// (which turns them into their gradients).
    pub fn gates(&self) -> ArrayView2<'_, T> {
        assert!(!self.gates_hold_grads, "the gate activations were spent by the backward");
        self.gates.view()
    }

    /// The cell's per-step buffer (GRU u; (T·B, 0) for the LSTM), (T·B, H).
    pub fn aux(&self) -> ArrayView2<'_, T> {
        self.aux.view()
    }

    /// The h entering each step of the window, h_{-1} … h_{T-2}: (T·B, H).
    pub fn h_in_window(&self) -> ArrayView2<'_, T> {
        self.hs.slice(s![..self.steps * self.batch, ..])
    }

    /// The cell states entering the steps of the window, c_{-1} … c_{T-2}: (T·B, H).
    pub fn c_in(&self) -> ArrayView2<'_, T> {
        self.cs.slice(s![..self.steps * self.batch, ..])
    }

    /// The recurrent weights the forward pass used (after quantization and weight norm), as
    /// W_hᵀ: (H, G·H), gate block k in columns [kH, (k+1)H).
    pub fn recurrent_weights_t(&self) -> ArrayView2<'_, T> {
        self.wh_t.view()
    }

    /// Q(W_h)ᵀ before weight norm, (H, G·H).
    pub fn quantized_recurrent_t(&self) -> ArrayView2<'_, T> {
        if self.qh_t.is_empty() { self.wh_t.view() } else { self.qh_t.view() }
    }

    /// The input weights the forward pass used, W_xᵀ: (in, G·H).
    pub fn input_weights_t(&self) -> ArrayView2<'_, T> {
        self.wx_t.view()
    }

    /// Q(W_x)ᵀ before weight norm, (in, G·H).
    pub fn quantized_input_t(&self) -> ArrayView2<'_, T> {
        if self.qx_t.is_empty() { self.wx_t.view() } else { self.qx_t.view() }
    }

    /// 1/σ of the recurrent product's normalizer, as `Normalizer::rstd_rows` lays it out.
    pub fn recurrent_rstd(&self) -> ArrayView2<'_, T> {
        self.rstd_h.view()
    }
}

/// Backward scratch, reused across windows.
#[derive(Default)]
pub struct Grads<T> {
    /// ∂L/∂(recurrent product) for a cell that takes it apart (GRU), (T·B, G·H).
    pub(super) dg_rec: Array2<T>,
    /// N_h's ∂L/∂γ, ∂L/∂β summed over the window by the steps, per group of rows
    /// (`steps::param_groups`), (groups, 2·G·H). (∂L/∂ of the raw products themselves go into
    /// the cache's x̂_h, which the backward spends.)
    pub(super) norm_sums: Array2<T>,
    /// ∂L/∂W_xᵀ's rows, ∂L/∂b, then N_x's ∂L/∂γ and ∂L/∂β, per group of rows, where the steps
    /// sum them (`steps::StepInputGrad`), (groups, (in + 3)·G·H).
    pub(super) input_sums: Array2<T>,
    /// Scratch of N_x's backward where it recomputes x̂_x: the window pass's (`input_norm.rs`)
    /// or the steps' ((4, B, G·H) as `steps::StepNx` lays it out).
    pub(super) xnorm_scratch: Array2<T>,
    /// ∂L/∂h and ∂L/∂c flowing backwards in time; after backward: w.r.t. the initial state.
    pub(super) dh: Array2<T>,
    pub(super) dc: Array2<T>,
    /// ∂L/∂(effective weights) as the products lay them out, (in, G·H) and (H, G·H), or in W's
    /// own layout, (G·H, in) and (G·H, H), where that gives the same bits (`layer::weight_grad`
    /// says which).
    pub(super) dwx: Array2<T>,
    pub(super) dwh: Array2<T>,
    /// ‖∂L/∂h_t‖ (Frobenius over the batch) for every step t of the last backward.
    pub(super) h_grad_norms: Vec<f64>,
    /// The window's effective W_h (G·H, H) for the per-step products ∂L/∂h_{t-1} = ∂L/∂z_t · W_h:
    /// in column panels where the kernel applies, else row-major for faer (`Layer::backward`).
    pub(super) wh_panels: PanelMatrix,
    pub(super) wh: Array2<T>,
    /// ∂L/∂z (T·B, G·H) in bf16 panels for the weight gradients (`gemm_precision = "bf16"`).
    pub(super) dz_panels: PanelMatrix,
}

impl<T: Real> Grads<T> {
    /// ∂L/∂h_{-1}, ∂L/∂c_{-1}: the gradient reaching the window's initial state, (B, H) each.
    pub fn initial_state(&self) -> (ArrayView2<'_, T>, ArrayView2<'_, T>) {
        (self.dh.view(), self.dc.view())
    }

    /// ‖∂ξ/∂h_t‖ over the batch for every step t of the last backward.
    pub fn h_grad_norms(&self) -> &[f64] {
        &self.h_grad_norms
    }
}
