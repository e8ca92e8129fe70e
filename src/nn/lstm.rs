//! One LSTM layer over a BPTT window: forward, backward, and the cache between them.
//!
//! Gate blocks are stacked i, f, a, o (a = candidate; PyTorch's "g"), H rows each:
//!   [i f a o] = W_x x_t + W_h h_{t-1} + b
//!   c_t = σ(i) ⊙ tanh(a) + σ(f) ⊙ c_{t-1};   h_t = σ(o) ⊙ tanh(c_t)
//!
//! Rows of every window buffer are time-major, n = t·B + b. What can be batched over the
//! window is one GEMM: the input projection X·W_xᵀ, the weight gradients dGᵀ·X and dGᵀ·H_prev,
//! and dX = dG·W_x. Only h_{t-1}·W_hᵀ and its backward run per step, into buffers allocated
//! before the time loop. Weights enter the window through `prepare_weights` (quantize, then
//! weight-normalize), once per window, in the transposed layout (in, 4H) the GEMMs want.

use crate::nn::norm::{NormKind, ProductNorm};
use crate::nn::{quant, weight_norm};
use crate::spec::{Normalization, Quantizer};
use crate::tensor::{Group, Param, Real, ensure_shape, gemm, gemm_with, simd_kernel, threads};
use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s};

/// What feeds a layer: token ids (one-hot input, done as a row gather) or dense rows.
#[derive(Clone, Copy)]
pub enum LayerInput<'a, T> {
    OneHot(&'a [u32]),
    Dense(ArrayView2<'a, T>),
}

impl<T> LayerInput<'_, T> {
    pub fn rows(&self) -> usize {
        match self {
            LayerInput::OneHot(ids) => ids.len(),
            LayerInput::Dense(x) => x.nrows(),
        }
    }
}

pub struct LstmLayer<T> {
    pub input_size: usize,
    pub hidden: usize,
    /// Latent full-precision weights, PyTorch layout (4H, in) and (4H, H).
    pub w_x: Param<T>,
    pub w_h: Param<T>,
    /// One bias per layer, (1, 4H).
    pub bias: Param<T>,
    pub quantizer: Quantizer,
    /// Quantize W_x too (false for sequential MNIST, whose 4H×1 input weights stay fp).
    pub quantize_input: bool,
    pub normalization: Normalization,
    /// Weight-normalization gains g, one per row: (1, 4H) each for W_x and W_h.
    pub wn_gain_x: Option<Param<T>>,
    pub wn_gain_h: Option<Param<T>>,
    /// Layer/batch normalizers of the products W_x·x and W_h·h.
    pub norm_x: Option<ProductNorm<T>>,
    pub norm_h: Option<ProductNorm<T>>,
    /// lab/lat only: d = sqrt(v) + 1e-8 from the optimizer's raw second moment of each latent
    /// weight, (4H, in) and (4H, H); None before the first Adam step (d = 1).
    pub curvature_x: Option<Array2<T>>,
    pub curvature_h: Option<Array2<T>>,
}

/// Everything forward leaves for backward, plus the window's effective weights.
#[derive(Default)]
pub struct LstmCache<T> {
    pub steps: usize,
    pub batch: usize,
    /// Effective weights used by this window (after quantization and weight norm), (in, 4H).
    pub wx_t: Array2<T>,
    pub wh_t: Array2<T>,
    /// Quantized (before weight norm) weights, (in, 4H); kept for the WN backward.
    pub qx_t: Array2<T>,
    pub qh_t: Array2<T>,
    /// Gate activations σ(i), σ(f), tanh(a), σ(o): (T·B, 4H).
    pub gates: Array2<T>,
    /// h_{-1}, h_0 … h_{T-1}: ((T+1)·B, H); likewise c.
    pub hs: Array2<T>,
    pub cs: Array2<T>,
    pub tanh_c: Array2<T>,
    /// Layer/batch norm only: the raw products (scratch), the normalized x̂ and 1/σ of each
    /// product (x: whole window; h: every step).
    pub z: Array2<T>,
    pub xhat_x: Array2<T>,
    pub rstd_x: Array2<T>,
    pub xhat_h: Array2<T>,
    pub rstd_h: Array2<T>,
}

impl<T: Real> LstmCache<T> {
    /// The window's outputs h_0 … h_{T-1}, (T·B, H).
    pub fn output(&self) -> ArrayView2<'_, T> {
        self.hs.slice(s![self.batch.., ..])
    }

    /// Final state (h_{T-1}, c_{T-1}), (B, H) each: carried into the next window.
    pub fn final_state(&self) -> (ArrayView2<'_, T>, ArrayView2<'_, T>) {
        let n = self.steps * self.batch;
        (self.hs.slice(s![n.., ..]), self.cs.slice(s![n.., ..]))
    }
}

/// Backward scratch, reused across windows.
#[derive(Default)]
pub struct LstmGrads<T> {
    /// ∂L/∂(gate pre-activations), (T·B, 4H).
    pub dgates: Array2<T>,
    /// ∂L/∂(raw products) under layer/batch norm, (T·B, 4H).
    pub dz: Array2<T>,
    /// ∂L/∂h and ∂L/∂c flowing backwards in time; after backward: w.r.t. the initial state.
    pub dh: Array2<T>,
    pub dc: Array2<T>,
    /// ∂L/∂(effective weights), (in, 4H) and (H, 4H).
    pub dwx_t: Array2<T>,
    pub dwh_t: Array2<T>,
    /// ‖∂L/∂h_t‖ (Frobenius over the batch) for every step t of the last backward.
    pub h_grad_norms: Vec<f64>,
    /// The window's effective W_h as (4H, H), row-major: the per-step product ∂L/∂h_{t-1} =
    /// ∂L/∂z_t · W_h reads it contiguously (through a transposed view of `wh_t` the GEMM packs
    /// it at every step: 143 vs 220 GFLOP/s on char's 32×2048·2048×512, examples/gemm_shapes).
    pub wh: Array2<T>,
}

impl<T: Real> LstmLayer<T> {
    /// `slots`: time slots of separate batch statistics (T_max = bptt).
    pub fn new(
        prefix: &str,
        input_size: usize,
        hidden: usize,
        quantizer: Quantizer,
        normalization: Normalization,
        slots: usize,
    ) -> Self {
        let g = 4 * hidden;
        let wn = normalization == Normalization::Weight;
        let gain = |name: &str| Some(Param::new(format!("{prefix}.{name}"), Array2::zeros((1, g)), Group::Other));
        LstmLayer {
            input_size,
            hidden,
            w_x: Param::new(format!("{prefix}.w_x"), Array2::zeros((g, input_size)), Group::LatentWeight),
            w_h: Param::new(format!("{prefix}.w_h"), Array2::zeros((g, hidden)), Group::LatentWeight),
            bias: Param::new(format!("{prefix}.bias"), Array2::zeros((1, g)), Group::Other),
            quantizer,
            quantize_input: true,
            normalization,
            wn_gain_x: if wn { gain("wn_gain_x") } else { None },
            wn_gain_h: if wn { gain("wn_gain_h") } else { None },
            norm_x: ProductNorm::for_normalization(normalization, &format!("{prefix}.norm_x"), hidden, slots),
            norm_h: ProductNorm::for_normalization(normalization, &format!("{prefix}.norm_h"), hidden, slots),
            curvature_x: None,
            curvature_h: None,
        }
    }

    /// Weight-norm gains start at the row norms of the initial full-precision weights (SPEC §1).
    pub fn init_weight_norm_gains(&mut self) {
        if let Some(g) = &mut self.wn_gain_x {
            g.value.row_mut(0).assign(&weight_norm::row_norms(self.w_x.value.view()));
        }
        if let Some(g) = &mut self.wn_gain_h {
            g.value.row_mut(0).assign(&weight_norm::row_norms(self.w_h.value.view()));
        }
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut v = vec![&mut self.w_x, &mut self.w_h, &mut self.bias];
        v.extend(self.wn_gain_x.as_mut());
        v.extend(self.wn_gain_h.as_mut());
        for n in [self.norm_x.as_mut(), self.norm_h.as_mut()].into_iter().flatten() {
            v.extend(n.params_mut());
        }
        v
    }

    /// Parameter values and batch-norm running statistics by name (for checkpoints).
    pub fn named_tensors_mut(&mut self) -> Vec<(String, &mut Array2<T>)> {
        let mut v: Vec<(String, &mut Array2<T>)> = Vec::new();
        for p in [
            Some(&mut self.w_x),
            Some(&mut self.w_h),
            Some(&mut self.bias),
            self.wn_gain_x.as_mut(),
            self.wn_gain_h.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            v.push((p.name.clone(), &mut p.value));
        }
        for n in [self.norm_x.as_mut(), self.norm_h.as_mut()].into_iter().flatten() {
            let ProductNorm { gain, bias, running_mean, running_var, .. } = n;
            let prefix = gain.name.trim_end_matches(".gain").to_string();
            v.push((gain.name.clone(), &mut gain.value));
            v.push((bias.name.clone(), &mut bias.value));
            v.push((format!("{prefix}.running_mean"), running_mean));
            v.push((format!("{prefix}.running_var"), running_var));
        }
        v
    }

    /// Q(W) per gate block, then weight norm, into the cache's transposed effective weights.
    pub fn prepare_weights(&self, cache: &mut LstmCache<T>) {
        let qz = if self.quantize_input { self.quantizer } else { Quantizer::Fp };
        let (cx, ch) = (self.curvature_x.as_ref(), self.curvature_h.as_ref());
        prepare_one(self.w_x.value.view(), qz, cx, self.wn_gain_x.as_ref(), &mut cache.qx_t, &mut cache.wx_t);
        prepare_one(
            self.w_h.value.view(),
            self.quantizer,
            ch,
            self.wn_gain_h.as_ref(),
            &mut cache.qh_t,
            &mut cache.wh_t,
        );
    }

    /// Run the window. `h0`, `c0` are (B, H); weights must have been prepared. `train` picks
    /// batch statistics (and updates the running ones) over running statistics.
    pub fn forward(
        &mut self,
        cache: &mut LstmCache<T>,
        input: LayerInput<T>,
        h0: ArrayView2<T>,
        c0: ArrayView2<T>,
        train: bool,
    ) {
        let batch = h0.nrows();
        let rows = input.rows();
        let steps = rows / batch;
        let (h, g) = (self.hidden, 4 * self.hidden);
        assert_eq!(steps * batch, rows, "window rows must be a multiple of the batch");
        cache.steps = steps;
        cache.batch = batch;
        ensure_shape(&mut cache.gates, rows, g);
        ensure_shape(&mut cache.hs, rows + batch, h);
        ensure_shape(&mut cache.cs, rows + batch, h);
        ensure_shape(&mut cache.tanh_c, rows, h);
        cache.hs.slice_mut(s![..batch, ..]).assign(&h0);
        cache.cs.slice_mut(s![..batch, ..]).assign(&c0);

        // Input projection for the whole window: G = N_x(X·W_xᵀ) + b. Without a normalizer the
        // product goes straight into G; with one, into the scratch z first.
        let bias = self.bias.value.row(0);
        let z = if self.norm_x.is_some() { &mut cache.z } else { &mut cache.gates };
        ensure_shape(z, rows, g);
        match input {
            LayerInput::OneHot(ids) => {
                for (mut row, &id) in z.outer_iter_mut().zip(ids) {
                    row.assign(&cache.wx_t.row(id as usize));
                }
            }
            LayerInput::Dense(x) => gemm(z.view_mut(), false, x, cache.wx_t.view(), T::one()),
        }
        match &mut self.norm_x {
            None => cache.gates += &bias,
            Some(nx) => {
                cache.gates.assign(&bias.broadcast((rows, g)).unwrap());
                ensure_shape(&mut cache.xhat_x, rows, g);
                ensure_shape(&mut cache.rstd_x, if nx.kind == NormKind::Layer { rows } else { steps }, nx.rstd_cols());
                for t in 0..steps {
                    let r = t * batch..(t + 1) * batch;
                    let rr = rstd_rows_kind(nx.kind, t, batch);
                    nx.forward(
                        cache.z.slice(s![r.clone(), ..]),
                        t,
                        train,
                        cache.xhat_x.slice_mut(s![r.clone(), ..]),
                        cache.rstd_x.slice_mut(s![rr, ..]),
                        cache.gates.slice_mut(s![r, ..]),
                    );
                }
            }
        }
        if let Some(nh) = &self.norm_h {
            ensure_shape(&mut cache.z, batch, g);
            ensure_shape(&mut cache.xhat_h, rows, g);
            ensure_shape(&mut cache.rstd_h, if nh.kind == NormKind::Layer { rows } else { steps }, nh.rstd_cols());
        }

        let LstmCache { wh_t, gates, hs, cs, tanh_c, z, xhat_h, rstd_h, .. } = cache;
        // Without a recurrent normalizer, or with layer norm (row-wise), the rows of the batch
        // never interact: each thread runs its half of the batch through the whole window
        // (G_t += N_h(h_{t-1}·W_hᵀ), the only per-step GEMM, then the cell), with no join per step.
        if self.norm_h.as_ref().is_none_or(|n| n.kind == NormKind::Layer) {
            let layer_norm = self.norm_h.as_ref();
            let rows = WindowRows {
                gates: gates.view_mut().into_shape_with_order((steps, batch, g)).unwrap(),
                hs: hs.view_mut().into_shape_with_order((steps + 1, batch, h)).unwrap(),
                cs: cs.view_mut().into_shape_with_order((steps + 1, batch, h)).unwrap(),
                tanh_c: tanh_c.view_mut().into_shape_with_order((steps, batch, h)).unwrap(),
                ln: layer_norm.map(|_| LnRows {
                    z: z.slice_mut(s![..batch, ..]),
                    xhat: xhat_h.view_mut().into_shape_with_order((steps, batch, g)).unwrap(),
                    rstd: rstd_h.view_mut().into_shape_with_order((steps, batch, 4)).unwrap(),
                }),
            };
            let wh_t = wh_t.view();
            split_batch(rows, batch, &|r: WindowRows<T>, par| forward_rows(r, wh_t, layer_norm, h, par));
            return;
        }
        // Batch norm needs the statistics of the whole batch at every step: the GEMM runs on
        // all rows (threaded inside), then G_t += N_h(h_{t-1}·W_hᵀ), then the cell.
        let nh = self.norm_h.as_mut().expect("batch norm");
        for t in 0..steps {
            let (r0, r1) = (t * batch, (t + 1) * batch);
            gemm(z.slice_mut(s![..batch, ..]), false, hs.slice(s![r0..r1, ..]), wh_t.view(), T::one());
            let rr = rstd_rows_kind(nh.kind, t, batch);
            nh.forward(
                z.slice(s![..batch, ..]),
                t,
                train,
                xhat_h.slice_mut(s![r0..r1, ..]),
                rstd_h.slice_mut(s![rr, ..]),
                gates.slice_mut(s![r0..r1, ..]),
            );
            let (c_prev, c_next) = cs.view_mut().split_at(Axis(0), r1);
            let gt = gates.slice_mut(s![r0..r1, ..]);
            let tc = tanh_c.slice_mut(s![r0..r1, ..]);
            let ht = hs.slice_mut(s![r1..r1 + batch, ..]);
            cell_forward(gt, c_prev.slice(s![r0.., ..]), c_next.slice_move(s![..batch, ..]), tc, ht, h);
        }
    }

    /// Backward through the window. `d_out` is ∂L/∂h_t for every step (T·B, H); the state
    /// handed to the next window is detached, so no gradient enters at the end. Accumulates
    /// into the parameters' grads, writes ∂L/∂x into `d_input` if given (dense input), and
    /// leaves ∂L/∂h_{-1}, ∂L/∂c_{-1} in `grads.dh`, `grads.dc`.
    pub fn backward(
        &mut self,
        cache: &LstmCache<T>,
        grads: &mut LstmGrads<T>,
        input: LayerInput<T>,
        d_out: ArrayView2<T>,
        d_input: Option<ArrayViewMut2<T>>,
    ) {
        let (steps, batch, h, g) = (cache.steps, cache.batch, self.hidden, 4 * self.hidden);
        let rows = steps * batch;
        ensure_shape(&mut grads.dgates, rows, g);
        ensure_shape(&mut grads.dh, batch, h);
        ensure_shape(&mut grads.dc, batch, h);
        if self.norm_x.is_some() || self.norm_h.is_some() {
            ensure_shape(&mut grads.dz, rows, g);
        }
        grads.dh.fill(T::zero());
        grads.dc.fill(T::zero());
        grads.h_grad_norms.resize(steps, 0.0);
        ensure_shape(&mut grads.wh, g, h);
        grads.wh.assign(&cache.wh_t.t());
        let LstmGrads { dgates, dz, dh, dc, h_grad_norms, wh, .. } = grads;
        let wh = wh.view();
        if self.norm_h.as_ref().is_none_or(|n| n.kind == NormKind::Layer) {
            // As in the forward: each thread takes half the batch through the whole window.
            let layer_norm = self.norm_h.as_ref();
            let rows = GradWindowRows {
                gates: cache.gates.view().into_shape_with_order((steps, batch, g)).unwrap(),
                cs: cache.cs.view().into_shape_with_order((steps + 1, batch, h)).unwrap(),
                tanh_c: cache.tanh_c.view().into_shape_with_order((steps, batch, h)).unwrap(),
                d_out: d_out.into_shape_with_order((steps, batch, h)).unwrap(),
                dh: dh.view_mut(),
                dc: dc.view_mut(),
                dg: dgates.view_mut().into_shape_with_order((steps, batch, g)).unwrap(),
                ln: layer_norm.map(|_| LnGradRows {
                    xhat: cache.xhat_h.view().into_shape_with_order((steps, batch, g)).unwrap(),
                    rstd: cache.rstd_h.view().into_shape_with_order((steps, batch, 4)).unwrap(),
                    dz: dz.view_mut().into_shape_with_order((steps, batch, g)).unwrap(),
                }),
            };
            let sq = std::sync::Mutex::new(vec![0.0f64; steps]);
            split_batch(rows, batch, &|r: GradWindowRows<T>, par| {
                let part = backward_rows(r, wh, layer_norm, h, par);
                let mut total = sq.lock().unwrap();
                total.iter_mut().zip(part).for_each(|(a, b)| *a += b);
            });
            for (n, s) in h_grad_norms.iter_mut().zip(sq.into_inner().unwrap()) {
                *n = s.sqrt();
            }
        } else {
            let nh = self.norm_h.as_mut().expect("batch norm");
            for t in (0..steps).rev() {
                let (r0, r1) = (t * batch, (t + 1) * batch);
                h_grad_norms[t] = cell_backward(
                    cache.gates.slice(s![r0..r1, ..]),
                    cache.cs.slice(s![r0..r1, ..]),
                    cache.tanh_c.slice(s![r0..r1, ..]),
                    d_out.slice(s![r0..r1, ..]),
                    dh.view_mut(),
                    dc.view_mut(),
                    dgates.slice_mut(s![r0..r1, ..]),
                    h,
                )
                .sqrt();
                // ∂L/∂h_{t-1} = ∂L/∂(W_h·h_{t-1}) · W_h through N_h, whose backward needs the
                // whole batch of the step.
                let rr = rstd_rows_kind(nh.kind, t, batch);
                nh.backward(
                    dgates.slice(s![r0..r1, ..]),
                    cache.xhat_h.slice(s![r0..r1, ..]),
                    cache.rstd_h.slice(s![rr, ..]),
                    dz.slice_mut(s![r0..r1, ..]),
                );
                gemm(dh.view_mut(), false, dz.slice(s![r0..r1, ..]), wh, T::one());
            }
        }

        // Layer norm's γ, β gradients of the recurrent product, for the whole window at once.
        if let Some(nh) = self.norm_h.as_mut().filter(|n| n.kind == NormKind::Layer) {
            nh.param_grads(grads.dgates.view(), cache.xhat_h.view());
        }
        // Window-batched weight gradients w.r.t. the effective (transposed) weights.
        ensure_shape(&mut grads.dwh_t, h, g);
        let d_zh = if self.norm_h.is_some() { grads.dz.view() } else { grads.dgates.view() };
        gemm(grads.dwh_t.view_mut(), false, cache.hs.slice(s![..rows, ..]).t(), d_zh, T::one());
        // ∂L/∂(W_x·x): through N_x when there is one (dz is free again now).
        if let Some(nx) = &mut self.norm_x {
            for t in 0..steps {
                let r = t * batch..(t + 1) * batch;
                let rr = rstd_rows_kind(nx.kind, t, batch);
                nx.backward(
                    grads.dgates.slice(s![r.clone(), ..]),
                    cache.xhat_x.slice(s![r.clone(), ..]),
                    cache.rstd_x.slice(s![rr, ..]),
                    grads.dz.slice_mut(s![r, ..]),
                );
            }
        }
        let d_zx = if self.norm_x.is_some() { grads.dz.view() } else { grads.dgates.view() };
        ensure_shape(&mut grads.dwx_t, self.input_size, g);
        match input {
            LayerInput::OneHot(ids) => {
                grads.dwx_t.fill(T::zero());
                for (row, &id) in d_zx.outer_iter().zip(ids) {
                    let mut d = grads.dwx_t.row_mut(id as usize);
                    d.zip_mut_with(&row, |d, &v| *d += v);
                }
            }
            LayerInput::Dense(x) => {
                gemm(grads.dwx_t.view_mut(), false, x.t(), d_zx, T::one());
                if let Some(dx) = d_input {
                    gemm(dx, false, d_zx, cache.wx_t.t(), T::one());
                }
            }
        }
        let db = grads.dgates.sum_axis(Axis(0));
        self.bias.grad.row_mut(0).zip_mut_with(&db, |a, &b| *a += b);

        // Back through weight norm, then straight through the quantizer to the latent weights.
        backward_one(&mut self.w_x, self.wn_gain_x.as_mut(), &cache.qx_t, &grads.dwx_t);
        backward_one(&mut self.w_h, self.wn_gain_h.as_mut(), &cache.qh_t, &grads.dwh_t);
    }
}

/// One half of the batch (or all of it) over the whole window, as 3-D views (time, row, ·):
/// what the forward touches.
struct WindowRows<'a, T> {
    gates: ArrayViewMut3<'a, T>,
    /// h_{-1} … h_{T-1} and c likewise: (T+1, rows, H)
    hs: ArrayViewMut3<'a, T>,
    cs: ArrayViewMut3<'a, T>,
    tanh_c: ArrayViewMut3<'a, T>,
    /// Layer norm of the recurrent product: the step's scratch product and the caches.
    ln: Option<LnRows<'a, T>>,
}

struct LnRows<'a, T> {
    z: ArrayViewMut2<'a, T>,
    xhat: ArrayViewMut3<'a, T>,
    rstd: ArrayViewMut3<'a, T>,
}

/// What the backward touches, for the same rows.
struct GradWindowRows<'a, T> {
    gates: ArrayView3<'a, T>,
    cs: ArrayView3<'a, T>,
    tanh_c: ArrayView3<'a, T>,
    d_out: ArrayView3<'a, T>,
    dh: ArrayViewMut2<'a, T>,
    dc: ArrayViewMut2<'a, T>,
    dg: ArrayViewMut3<'a, T>,
    ln: Option<LnGradRows<'a, T>>,
}

struct LnGradRows<'a, T> {
    xhat: ArrayView3<'a, T>,
    rstd: ArrayView3<'a, T>,
    dz: ArrayViewMut3<'a, T>,
}

/// Views that can be cut into two disjoint halves of the batch.
trait SplitBatch: Sized + Send {
    fn split(self, m: usize) -> (Self, Self);
}

impl<'a, T: Real> SplitBatch for WindowRows<'a, T> {
    fn split(self, m: usize) -> (Self, Self) {
        let (g0, g1) = self.gates.split_at(Axis(1), m);
        let (h0, h1) = self.hs.split_at(Axis(1), m);
        let (c0, c1) = self.cs.split_at(Axis(1), m);
        let (t0, t1) = self.tanh_c.split_at(Axis(1), m);
        let (l0, l1) = match self.ln {
            Some(l) => {
                let (z0, z1) = l.z.split_at(Axis(0), m);
                let (x0, x1) = l.xhat.split_at(Axis(1), m);
                let (r0, r1) = l.rstd.split_at(Axis(1), m);
                (Some(LnRows { z: z0, xhat: x0, rstd: r0 }), Some(LnRows { z: z1, xhat: x1, rstd: r1 }))
            }
            None => (None, None),
        };
        (
            WindowRows { gates: g0, hs: h0, cs: c0, tanh_c: t0, ln: l0 },
            WindowRows { gates: g1, hs: h1, cs: c1, tanh_c: t1, ln: l1 },
        )
    }
}

impl<'a, T: Real> SplitBatch for GradWindowRows<'a, T> {
    fn split(self, m: usize) -> (Self, Self) {
        let (g0, g1) = self.gates.split_at(Axis(1), m);
        let (c0, c1) = self.cs.split_at(Axis(1), m);
        let (t0, t1) = self.tanh_c.split_at(Axis(1), m);
        let (o0, o1) = self.d_out.split_at(Axis(1), m);
        let (dh0, dh1) = self.dh.split_at(Axis(0), m);
        let (dc0, dc1) = self.dc.split_at(Axis(0), m);
        let (dg0, dg1) = self.dg.split_at(Axis(1), m);
        let (l0, l1) = match self.ln {
            Some(l) => {
                let (x0, x1) = l.xhat.split_at(Axis(1), m);
                let (r0, r1) = l.rstd.split_at(Axis(1), m);
                let (z0, z1) = l.dz.split_at(Axis(1), m);
                (Some(LnGradRows { xhat: x0, rstd: r0, dz: z0 }), Some(LnGradRows { xhat: x1, rstd: r1, dz: z1 }))
            }
            None => (None, None),
        };
        (
            GradWindowRows { gates: g0, cs: c0, tanh_c: t0, d_out: o0, dh: dh0, dc: dc0, dg: dg0, ln: l0 },
            GradWindowRows { gates: g1, cs: c1, tanh_c: t1, d_out: o1, dh: dh1, dc: dc1, dg: dg1, ln: l1 },
        )
    }
}

/// Batches at least this large are split in two halves, one per thread.
const SPLIT_MIN_BATCH: usize = 16;

/// Run `f` on all rows, or on two halves in parallel when there are two threads and enough
/// rows (each half's GEMMs then run on one thread: `par` = false).
fn split_batch<R: SplitBatch>(rows: R, batch: usize, f: &(dyn Fn(R, bool) + Sync)) {
    if threads() > 1 && batch >= SPLIT_MIN_BATCH {
        let (a, b) = rows.split(batch / 2);
        rayon::join(|| f(a, false), || f(b, false));
    } else {
        f(rows, true);
    }
}

/// The forward time loop over some rows of the batch (no normalizer or layer norm).
fn forward_rows<T: Real>(
    mut r: WindowRows<T>,
    wh_t: ArrayView2<T>,
    layer_norm: Option<&ProductNorm<T>>,
    hidden: usize,
    par: bool,
) {
    for t in 0..r.gates.len_of(Axis(0)) {
        let mut gates = r.gates.index_axis_mut(Axis(0), t);
        let (h_prev, mut h_next) = r.hs.view_mut().split_at(Axis(0), t + 1);
        let (c_prev, mut c_next) = r.cs.view_mut().split_at(Axis(0), t + 1);
        let h_prev = h_prev.index_axis(Axis(0), t);
        match (&mut r.ln, layer_norm) {
            (Some(l), Some(nh)) => {
                gemm_with(l.z.view_mut(), false, h_prev, wh_t, T::one(), par);
                nh.layer_forward_rows(
                    l.z.view(),
                    l.xhat.index_axis_mut(Axis(0), t),
                    l.rstd.index_axis_mut(Axis(0), t),
                    gates.view_mut(),
                );
            }
            _ => gemm_with(gates.view_mut(), true, h_prev, wh_t, T::one(), par),
        }
        cell_forward(
            gates,
            c_prev.index_axis(Axis(0), t),
            c_next.index_axis_mut(Axis(0), 0),
            r.tanh_c.index_axis_mut(Axis(0), t),
            h_next.index_axis_mut(Axis(0), 0),
            hidden,
        );
    }
}

/// The backward time loop over some rows; returns Σ (∂L/∂h_t)² over those rows for every t.
/// `wh` is the effective W_h, (4H, H).
fn backward_rows<T: Real>(
    mut r: GradWindowRows<T>,
    wh: ArrayView2<T>,
    layer_norm: Option<&ProductNorm<T>>,
    hidden: usize,
    par: bool,
) -> Vec<f64> {
    let steps = r.gates.len_of(Axis(0));
    let mut sq = vec![0.0; steps];
    for t in (0..steps).rev() {
        let mut dg = r.dg.index_axis_mut(Axis(0), t);
        sq[t] = cell_backward(
            r.gates.index_axis(Axis(0), t),
            r.cs.index_axis(Axis(0), t),
            r.tanh_c.index_axis(Axis(0), t),
            r.d_out.index_axis(Axis(0), t),
            r.dh.view_mut(),
            r.dc.view_mut(),
            dg.view_mut(),
            hidden,
        );
        // ∂L/∂h_{t-1} = ∂L/∂(W_h·h_{t-1}) · W_h, through layer norm's row-wise backward.
        match (&mut r.ln, layer_norm) {
            (Some(l), Some(nh)) => {
                let mut dz = l.dz.index_axis_mut(Axis(0), t);
                nh.layer_input_grad(
                    dg.view(),
                    l.xhat.index_axis(Axis(0), t),
                    l.rstd.index_axis(Axis(0), t),
                    dz.view_mut(),
                );
                gemm_with(r.dh.view_mut(), false, dz.view(), wh, T::one(), par);
            }
            _ => gemm_with(r.dh.view_mut(), false, dg.view(), wh, T::one(), par),
        }
    }
    sq
}

/// Rows of step t in a cache of 1/σ: B rows per step for layer norm, one row for batch norm.
fn rstd_rows_kind(kind: NormKind, t: usize, batch: usize) -> std::ops::Range<usize> {
    match kind {
        NormKind::Layer => t * batch..(t + 1) * batch,
        NormKind::Batch { .. } => t..t + 1,
    }
}

/// W (4H, in) latent → Q(W) per gate block → weight norm → effective, all transposed (in, 4H).
fn prepare_one<T: Real>(
    w: ArrayView2<T>,
    quantizer: Quantizer,
    curvature: Option<&Array2<T>>,
    gain: Option<&Param<T>>,
    q_t: &mut Array2<T>,
    eff_t: &mut Array2<T>,
) {
    let (g, inp) = w.dim();
    ensure_shape(q_t, inp, g);
    ensure_shape(eff_t, inp, g);
    let hidden = g / 4;
    for k in 0..4 {
        let block = w.slice(s![k * hidden..(k + 1) * hidden, ..]);
        let rows = s![k * hidden..(k + 1) * hidden, ..];
        let d = curvature.map(|c| c.slice(rows));
        quant::quantize_block(quantizer, block, d, q_t.slice_mut(s![.., k * hidden..(k + 1) * hidden]).reversed_axes());
    }
    match gain {
        Some(g) => weight_norm::forward(q_t.view(), g.value.row(0), eff_t.view_mut()),
        None => eff_t.assign(q_t),
    }
}

/// ∂L/∂effective (in, 4H) → gains' grads (weight norm) and latent grads (4H, in) via the STE.
fn backward_one<T: Real>(w: &mut Param<T>, gain: Option<&mut Param<T>>, q_t: &Array2<T>, d_eff_t: &Array2<T>) {
    match gain {
        Some(g) => {
            let mut dg = g.grad.row_mut(0);
            weight_norm::backward(
                q_t.view(),
                g.value.row(0),
                d_eff_t.view(),
                dg.view_mut(),
                w.grad.view_mut().reversed_axes(),
            );
        }
        None => w.grad.zip_mut_with(&d_eff_t.t(), |a, &b| *a += b),
    }
}

/// One step of the fused cell: pre-activations in `g` (B, 4H) become activations; writes c_t,
/// tanh(c_t), h_t.
fn cell_forward<T: Real>(
    mut g: ArrayViewMut2<T>,
    c_prev: ArrayView2<T>,
    mut c: ArrayViewMut2<T>,
    mut tanh_c: ArrayViewMut2<T>,
    mut h_out: ArrayViewMut2<T>,
    hidden: usize,
) {
    for b in 0..g.nrows() {
        let rows = CellRow {
            g: g.row_mut(b).into_slice().unwrap(),
            c_prev: c_prev.row(b).to_slice().unwrap(),
            c: c.row_mut(b).into_slice().unwrap(),
            tanh_c: tanh_c.row_mut(b).into_slice().unwrap(),
            h: h_out.row_mut(b).into_slice().unwrap(),
        };
        cell_forward_row(rows, hidden);
    }
}

/// One batch row of the cell's buffers.
struct CellRow<'a, T> {
    g: &'a mut [T],
    c_prev: &'a [T],
    c: &'a mut [T],
    tanh_c: &'a mut [T],
    h: &'a mut [T],
}

simd_kernel! {
    /// The cell's forward on one batch row (a kernel: compiled for AVX-512 and AVX2).
    fn cell_forward_row<T: Real>(r: CellRow<T>, hidden: usize) {
        let (gi, rest) = r.g.split_at_mut(hidden);
        let (gf, rest) = rest.split_at_mut(hidden);
        let (ga, go) = rest.split_at_mut(hidden);
        let (cp, cr, tr, hr) = (&r.c_prev[..hidden], &mut r.c[..hidden], &mut r.tanh_c[..hidden], &mut r.h[..hidden]);
        for j in 0..hidden {
            let i = gi[j].sigmoid();
            let f = gf[j].sigmoid();
            let a = ga[j].tanh_fast();
            let o = go[j].sigmoid();
            let cj = i * a + f * cp[j];
            let tc = cj.tanh_fast();
            (gi[j], gf[j], ga[j], go[j]) = (i, f, a, o);
            cr[j] = cj;
            tr[j] = tc;
            hr[j] = o * tc;
        }
    }
}

/// One step back through the cell. On entry `dh` holds ∂L/∂h_t from the future (recurrent
/// path) and `dc` ∂L/∂c_t from the future; `d_out` adds the gradient from above. Writes the
/// pre-activation gradients into `dg`, leaves ∂L/∂c_{t-1} in `dc`, and returns ‖∂L/∂h_t‖².
#[allow(clippy::too_many_arguments)]
fn cell_backward<T: Real>(
    gates: ArrayView2<T>,
    c_prev: ArrayView2<T>,
    tanh_c: ArrayView2<T>,
    d_out: ArrayView2<T>,
    mut dh: ArrayViewMut2<T>,
    mut dc: ArrayViewMut2<T>,
    mut dg: ArrayViewMut2<T>,
    hidden: usize,
) -> f64 {
    let mut sq = 0.0f64;
    for b in 0..gates.nrows() {
        let rows = CellGradRow {
            gates: gates.row(b).to_slice().unwrap(),
            c_prev: c_prev.row(b).to_slice().unwrap(),
            tanh_c: tanh_c.row(b).to_slice().unwrap(),
            d_out: d_out.row(b).to_slice().unwrap(),
            dh: dh.row_mut(b).into_slice().unwrap(),
            dc: dc.row_mut(b).into_slice().unwrap(),
            dg: dg.row_mut(b).into_slice().unwrap(),
        };
        sq += cell_backward_row(rows, hidden);
    }
    sq
}

struct CellGradRow<'a, T> {
    gates: &'a [T],
    c_prev: &'a [T],
    tanh_c: &'a [T],
    d_out: &'a [T],
    dh: &'a mut [T],
    dc: &'a mut [T],
    dg: &'a mut [T],
}

simd_kernel! {
    /// The cell's backward on one batch row; returns Σ_j (∂L/∂h_t[j])² of the row.
    fn cell_backward_row<T: Real>(r: CellGradRow<T>, hidden: usize) -> f64 {
        let one = T::one();
        let (gi, gf, ga, go) = (
            &r.gates[..hidden],
            &r.gates[hidden..2 * hidden],
            &r.gates[2 * hidden..3 * hidden],
            &r.gates[3 * hidden..4 * hidden],
        );
        let (cp, tr, dor) = (&r.c_prev[..hidden], &r.tanh_c[..hidden], &r.d_out[..hidden]);
        let (dhr, dcr) = (&mut r.dh[..hidden], &mut r.dc[..hidden]);
        let (dgi, rest) = r.dg.split_at_mut(hidden);
        let (dgf, rest) = rest.split_at_mut(hidden);
        let (dga, dgo) = rest.split_at_mut(hidden);
        for j in 0..hidden {
            let (i, f, a, o, tc) = (gi[j], gf[j], ga[j], go[j], tr[j]);
            let dht = dhr[j] + dor[j];
            let dct = dcr[j] + dht * o * (one - tc * tc);
            dgi[j] = dct * a * i * (one - i);
            dgf[j] = dct * cp[j] * f * (one - f);
            dga[j] = dct * i * (one - a * a);
            dgo[j] = dht * tc * o * (one - o);
            dcr[j] = dct * f;
        }
        // ‖∂L/∂h_t‖² of the row, in its own loop so the one above has no reduction to serialize;
        // in f64, since exploding gradients (plain bc) square past f32's range while finite
        let mut acc = [0.0f64; 16];
        let n = hidden / 16 * 16;
        for j in (0..n).step_by(16) {
            for l in 0..16 {
                let d = (dhr[j + l] + dor[j + l]).f64();
                acc[l] += d * d;
            }
        }
        let tail: f64 = (n..hidden).map(|j| (dhr[j] + dor[j]).f64().powi(2)).sum();
        acc.iter().sum::<f64>() + tail
    }
}
