//! One recurrent layer over a BPTT window: forward, backward, and the cache between them.
//!
//! What can be batched over the window is one GEMM: the input projection X·W_xᵀ (of a wide
//! input; token rows and a narrow input are cheaper per step, `steps::StepInput`), the weight
//! gradients dGᵀ·X and dGᵀ·H_prev, and dX = dG·W_x. Only h_{t-1}·W_hᵀ and its backward run per
//! step (`steps.rs`), into buffers allocated before the time loop. Weights enter the window
//! through `prepare_weights` (quantize, then weight-normalize), once per window, in the
//! transposed layout (in, G·H) the GEMMs want.

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s};

use super::steps::{self, GradWindowRows, InputRows, StepInput, StepInputGrad, StepNorm, WindowRows};
use super::{Cache, CellKind, Exchange, Grads, Gru, Lstm, OutputGrad, StepsGrad, input_norm};
use crate::nn::norm::{Normalization, Normalizer};
use crate::nn::packed::{PackedMatrix, WeightsRef};
use crate::nn::quant::{self, Quantizer};
use crate::nn::weight_norm;
use crate::tensor::{
    FixedRhs, Group, PanelMatrix, Param, Precision, Real, add_rows_at, column_sums, ensure_shape, gemm,
    runs_window_kernel, zip_tiled,
};

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

pub struct Layer<T> {
    pub cell: CellKind,
    pub input_size: usize,
    pub hidden: usize,
    /// Latent full-precision weights, PyTorch layout (G·H, in) and (G·H, H).
    pub w_x: Param<T>,
    pub w_h: Param<T>,
    /// The input side's bias, (1, G·H) (the LSTM's one bias, PyTorch's b_ih + b_hh).
    pub bias: Param<T>,
    /// The GRU's bias inside the reset product, b_hn, (1, H).
    pub bias_hn: Option<Param<T>>,
    pub quantizer: Quantizer,
    /// Quantize W_x too (false for sequential MNIST, whose 4H×1 input weights stay fp).
    pub quantize_input: bool,
    pub normalization: Normalization,
    /// Weight-normalization gains g, one per row: (1, G·H) each for W_x and W_h.
    pub wn_gain_x: Option<Param<T>>,
    pub wn_gain_h: Option<Param<T>>,
    /// Layer/batch normalizers of the products W_x·x and W_h·h.
    pub norm_x: Option<Normalizer<T>>,
    pub norm_h: Option<Normalizer<T>>,
    /// Weights fixed at load time for inference (a packed export): the products use them as
    /// they are, with nothing quantized or normalized again, and there is no backward.
    pub frozen: Option<Frozen>,
    /// Precision of the per-step products h_{t-1}·W_hᵀ and ∂L/∂z_t·W_h and of the weight
    /// gradients (`[train] gemm_precision`; bf16 on AMX, src/tensor/amx.rs).
    pub precision: Precision,
}

/// The effective weights of an exported layer.
pub struct Frozen {
    pub x: FrozenMatrix,
    pub h: FrozenMatrix,
}

/// One matrix of `Frozen`: packed, or f32 (a full-precision matrix, e.g. sequential MNIST's
/// W_x), both with weight norm folded in.
pub enum FrozenMatrix {
    /// Wᵀ, (in, G·H).
    Dense(Array2<f32>),
    Packed(PackedMatrix),
}

impl FrozenMatrix {
    fn weights<T: Real>(&self) -> WeightsRef<'_, T> {
        match self {
            FrozenMatrix::Dense(w) => WeightsRef::dense(dense_as::<T>(w)),
            FrozenMatrix::Packed(m) => WeightsRef::Packed(m),
        }
    }
}

/// A frozen f32 matrix as the layer's scalar type (frozen layers are f32 models).
fn dense_as<T: Real>(w: &Array2<f32>) -> ArrayView2<'_, T> {
    assert_eq!(std::any::TypeId::of::<T>(), std::any::TypeId::of::<f32>(), "frozen weights run in f32");
    assert!(w.is_standard_layout());
    // SAFETY: T is f32 (checked above) and w is a standard-layout array: the view
    // reinterprets the same elements with the same shape.
    unsafe { ArrayView2::from_shape_ptr(w.dim(), w.as_ptr() as *const T) }
}

/// Run `$body` with `$C` the cell type of `$kind` (static dispatch, once per window).
macro_rules! with_cell {
    ($kind:expr, $C:ident => $body:expr) => {
        match $kind {
            CellKind::Lstm => {
                type $C = Lstm;
                $body
            }
            CellKind::Gru => {
                type $C = Gru;
                $body
            }
        }
    };
}

impl<T: Real> Layer<T> {
    /// `slots`: time slots of separate batch statistics (T_max = bptt).
    pub fn new(
        prefix: &str,
        cell: CellKind,
        input_size: usize,
        hidden: usize,
        quantizer: Quantizer,
        normalization: Normalization,
        slots: usize,
    ) -> Self {
        let blocks = cell.gates();
        let g = blocks * hidden;
        let wn = normalization == Normalization::Weight;
        let gain = |name: &str| Some(Param::new(format!("{prefix}.{name}"), Array2::zeros((1, g)), Group::Other));
        let norm = |product: &str| {
            Normalizer::for_normalization(normalization, &format!("{prefix}.{product}"), hidden, blocks, slots)
        };
        let bias_hn = (cell == CellKind::Gru)
            .then(|| Param::new(format!("{prefix}.bias_hn"), Array2::zeros((1, hidden)), Group::Other));
        Layer {
            cell,
            input_size,
            hidden,
            w_x: Param::new(format!("{prefix}.w_x"), Array2::zeros((g, input_size)), Group::LatentWeight),
            w_h: Param::new(format!("{prefix}.w_h"), Array2::zeros((g, hidden)), Group::LatentWeight),
            bias: Param::new(format!("{prefix}.bias"), Array2::zeros((1, g)), Group::Other),
            bias_hn,
            quantizer,
            quantize_input: true,
            normalization,
            wn_gain_x: if wn { gain("wn_gain_x") } else { None },
            wn_gain_h: if wn { gain("wn_gain_h") } else { None },
            norm_x: norm("norm_x"),
            norm_h: norm("norm_h"),
            frozen: None,
            precision: Precision::F32,
        }
    }

    /// Weight-norm gains start at the row norms of the initial full-precision weights
    /// (docs/SPEC.md §1).
    pub fn init_weight_norm_gains(&mut self) {
        if let Some(g) = &mut self.wn_gain_x {
            g.value.row_mut(0).assign(&weight_norm::row_norms(self.w_x.value.view()));
        }
        if let Some(g) = &mut self.wn_gain_h {
            g.value.row_mut(0).assign(&weight_norm::row_norms(self.w_h.value.view()));
        }
    }

    /// The normalizers of the two products, where there are any.
    pub fn normalizers_mut(&mut self) -> impl Iterator<Item = &mut Normalizer<T>> {
        [self.norm_x.as_mut(), self.norm_h.as_mut()].into_iter().flatten()
    }

    /// Gate blocks per layer (LSTM 4, GRU 3).
    pub fn gates(&self) -> usize {
        self.cell.gates()
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut v = vec![&mut self.w_x, &mut self.w_h, &mut self.bias];
        v.extend(self.bias_hn.as_mut());
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
            self.bias_hn.as_mut(),
            self.wn_gain_x.as_mut(),
            self.wn_gain_h.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            v.push((p.name.clone(), &mut p.value));
        }
        for n in [self.norm_x.as_mut(), self.norm_h.as_mut()].into_iter().flatten() {
            // running statistics are batch norm's: layer norm keeps none
            let batch = !n.row_local();
            let Normalizer { gain, bias, running_mean, running_var, .. } = n;
            let prefix = gain.name.trim_end_matches(".gain").to_string();
            v.push((gain.name.clone(), &mut gain.value));
            v.push((bias.name.clone(), &mut bias.value));
            if batch {
                v.push((format!("{prefix}.running_mean"), running_mean));
                v.push((format!("{prefix}.running_var"), running_var));
            }
        }
        v
    }

    /// Q(W) per gate block, then weight norm, into the cache's transposed effective weights.
    /// lab/lat weigh each entry by d = √v + 1e-8 from the optimizer's raw second moment of the
    /// latent weight (d = 1 before the first Adam step, or with SGD).
    pub fn prepare_weights(&self, cache: &mut Cache<T>) {
        if self.frozen.is_some() {
            return; // the products read the frozen weights themselves
        }
        let (qx, blocks) = (if self.quantize_input { self.quantizer } else { Quantizer::Fp }, self.gates());
        let dx = curvature(qx, &self.w_x, &mut cache.d_x);
        prepare_one(self.w_x.value.view(), blocks, qx, dx, self.wn_gain_x.as_ref(), &mut cache.qx_t, &mut cache.wx_t);
        let dh = curvature(self.quantizer, &self.w_h, &mut cache.d_h);
        prepare_one(
            self.w_h.value.view(),
            blocks,
            self.quantizer,
            dh,
            self.wn_gain_h.as_ref(),
            &mut cache.qh_t,
            &mut cache.wh_t,
        );
    }

    /// Run the window. `h0`, `c0` are (B, H); weights must have been prepared. `train` picks
    /// batch statistics (and updates the running ones) over running statistics. `t0` is the
    /// in-window time index of the first step (0, but when sampling goes one step at a time):
    /// separate batch statistics are kept per in-window index.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        cache: &mut Cache<T>,
        input: LayerInput<T>,
        h0: ArrayView2<T>,
        c0: ArrayView2<T>,
        train: bool,
        t0: usize,
    ) {
        let batch = h0.nrows();
        let rows = input.rows();
        let steps = rows / batch;
        let (h, g) = (self.hidden, self.gates() * self.hidden);
        // the cell state c: the LSTM's, H wide; none (0 wide) for the GRU
        let hc = if self.cell.carries_c() { h } else { 0 };
        assert_eq!(steps * batch, rows, "window rows must be a multiple of the batch");
        cache.steps = steps;
        cache.batch = batch;
        cache.gates_hold_grads = false;
        ensure_shape(&mut cache.gates, rows, g);
        ensure_shape(&mut cache.hs, rows + batch, h);
        ensure_shape(&mut cache.cs, rows + batch, hc);
        let ha = self.cell.aux_width(h);
        ensure_shape(&mut cache.aux, rows, ha);
        ensure_shape(&mut cache.rec, if self.cell.product_apart() { batch } else { 0 }, g);
        cache.hs.slice_mut(s![..batch, ..]).assign(&h0);
        if hc > 0 {
            cache.cs.slice_mut(s![..batch, ..]).assign(&c0);
        }

        // The input side G = b + N_x(X·W_xᵀ). Where its product is cheap (token rows, a narrow
        // dense input) the time loop writes each step's own, just before that step's recurrent
        // product (`steps::StepInput`); otherwise one pass over the window here. Without a
        // normalizer the product goes straight into G; with one, `input_norm` adds N_x's output
        // into G = b.
        let bias = self.bias.value.row(0);
        let frozen = self.frozen.as_ref().map(|f| f.x.weights());
        let per_step = match &mut self.norm_x {
            None => {
                let per_step = match input {
                    LayerInput::OneHot(_) => true,
                    LayerInput::Dense(x) => x.ncols() <= input_norm::RECOMPUTE_MAX_INPUT,
                };
                if !per_step {
                    let LayerInput::Dense(x) = input else { unreachable!("token ids go step by step") };
                    // (ndarray views are invariant in their lifetime: no one WeightsRef for both)
                    match frozen {
                        Some(w) => w.product(cache.gates.view_mut(), false, x, true),
                        None => WeightsRef::dense(cache.wx_t.view()).product(cache.gates.view_mut(), false, x, true),
                    }
                    cache.gates += &bias;
                }
                per_step
            }
            Some(nx) => input_norm::forward(nx, frozen, input, bias, cache, train, t0),
        };

        // The recurrence: the per-step product W_h·h_{t-1}, its normalizer and the cell.
        let Cache {
            wh_t,
            wh_panels,
            wx_t,
            gates,
            hs,
            cs,
            aux,
            rec,
            z,
            xhat_h,
            rstd_h,
            bn_stats_h,
            xhat_x,
            rstd_x,
            bn_stats_x,
            table_x,
            rstd_table_x,
            level_ids,
            xhat_x_source,
            ..
        } = cache;
        // batch norm in training on two halves records each step's statistics for the running
        // ones, which are updated after the window (both halves only read the normalizer)
        let bn_split = train && steps::splits(batch) && self.norm_h.as_ref().is_some_and(|n| !n.row_local());
        if bn_split {
            ensure_shape(bn_stats_h, steps, 2 * g);
        }
        let exchange = Exchange::new();
        let (rr, rc) = match &self.norm_h {
            Some(nh) => {
                // two steps' rows: N_x's halves use both (above), the recurrence the first
                ensure_shape(z, 2 * batch, g);
                ensure_shape(xhat_h, rows, g);
                ensure_shape(rstd_h, steps * nh.rstd_rows_per_step(batch), nh.rstd_cols());
                (nh.rstd_rows_per_step(batch), nh.rstd_cols())
            }
            None => (0, 0),
        };
        let normed = self.norm_h.is_some();
        // the scratch z: N_h's step product in its first B rows, N_x's (recomputed) in the next
        let z_rows = z.nrows();
        let (z_h, z_x) = z.view_mut().split_at(Axis(0), batch.min(z_rows));
        let input = if per_step {
            let wx = frozen.unwrap_or(WeightsRef::dense(wx_t.view()));
            let bias = self.bias.value.as_slice().expect("a contiguous bias");
            let ids = |ids| ArrayView2::from_shape((steps, batch), ids).expect("T·B token ids");
            // layer norm's table is indexed by token, or by a narrow input's level
            let table_ids: Option<&[u32]> = match input {
                LayerInput::OneHot(i) => Some(i),
                LayerInput::Dense(_) if *xhat_x_source == input_norm::XhatX::Levels => Some(level_ids),
                LayerInput::Dense(_) => None,
            };
            match (&self.norm_x, input) {
                (None, LayerInput::OneHot(i)) => StepInput::Tokens { wx, ids: ids(i), bias },
                (None, LayerInput::Dense(x)) => StepInput::Narrow { wx, x: by_step(x, steps, batch), bias },
                (Some(nx), input) if !nx.row_local() => StepInput::BatchNormed {
                    wx,
                    input: match input {
                        LayerInput::OneHot(i) => InputRows::Tokens(ids(i)),
                        LayerInput::Dense(x) => InputRows::Narrow(by_step(x, steps, batch)),
                    },
                    bias,
                    norm: nx,
                    mean: super::cache::means(bn_stats_x),
                    rstd: rstd_x.view(),
                    z: z_x,
                },
                (Some(nx), _) if let Some(i) = table_ids => StepInput::Table {
                    table: table_x.view(),
                    rstd_table: rstd_table_x.view(),
                    ids: ids(i),
                    bias,
                    rstd: rstd_x.view_mut().into_shape_with_order((steps, batch, nx.rstd_cols())).unwrap(),
                },
                (Some(_), LayerInput::OneHot(_)) => unreachable!("table_ids holds every token input"),
                (Some(nx), LayerInput::Dense(x)) => StepInput::NarrowNormed {
                    wx,
                    x: by_step(x, steps, batch),
                    bias,
                    norm: nx,
                    z: z_x,
                    xhat: xhat_x.slice_mut(s![..batch, ..]),
                    rstd: rstd_x.view_mut().into_shape_with_order((steps, batch, nx.rstd_cols())).unwrap(),
                },
            }
        } else {
            StepInput::Window
        };
        let window = WindowRows {
            gates: gates.view_mut().into_shape_with_order((steps, batch, g)).unwrap(),
            hs: hs.view_mut().into_shape_with_order((steps + 1, batch, h)).unwrap(),
            cs: cs.view_mut().into_shape_with_order((steps + 1, batch, hc)).unwrap(),
            aux: aux.view_mut().into_shape_with_order((steps, batch, ha)).unwrap(),
            rec: rec.view_mut(),
            rec_bias: self.bias_hn.as_ref().map_or(&[], |b| b.value.as_slice().unwrap()),
            input,
            norm: StepNorm::new(self.norm_h.as_mut(), train, Some(&exchange)),
            t0,
            z: if normed { z_h } else { empty2() },
            xhat: if normed {
                xhat_h.view_mut().into_shape_with_order((steps, batch, g)).unwrap()
            } else {
                empty3(steps)
            },
            rstd: if normed {
                rstd_h.view_mut().into_shape_with_order((steps, rr, rc)).unwrap()
            } else {
                empty3(steps)
            },
            bn_stats: if bn_split { bn_stats_h.view_mut() } else { empty2() },
        };
        // W_hᵀ is fixed for the window: packed once for its per-step products (a thread's rows)
        let step_rows = if steps::splits(batch) { batch / 2 } else { batch };
        let wh = match &self.frozen {
            Some(f) => f.h.weights(),
            None => WeightsRef::Dense(wh_panels.pack(wh_t.view(), step_rows, self.precision)),
        };
        with_cell!(self.cell, C => steps::split_batch(window, batch, &|r: WindowRows<T>, par| steps::forward::<C, T>(r, wh, h, par)));
        if bn_split {
            let nh = self.norm_h.as_mut().expect("a batch normalizer");
            nh.apply_running(cache.bn_stats_h.view(), t0, batch);
        }
    }

    /// Backward through the window. `d_out` is ∂L/∂h_t from above (every step's or the last
    /// one's: `OutputGrad`); the state
    /// handed to the next window is detached, so no gradient enters at the end. Accumulates
    /// into the parameters' grads, writes ∂L/∂x into `d_input` if given (dense input), and
    /// leaves ∂L/∂h_{-1}, ∂L/∂c_{-1} in `grads.dh`, `grads.dc`. Spends the cache: the gate
    /// activations become their gradients (`Cache::gates`), so a second backward needs a
    /// forward first.
    pub fn backward(
        &mut self,
        cache: &mut Cache<T>,
        grads: &mut Grads<T>,
        input: LayerInput<T>,
        d_out: OutputGrad<T>,
        d_input: Option<ArrayViewMut2<T>>,
    ) {
        assert!(self.frozen.is_none(), "a frozen (exported) layer has no backward");
        let (steps, batch, h, g) = (cache.steps, cache.batch, self.hidden, self.gates() * self.hidden);
        let hc = if self.cell.carries_c() { h } else { 0 };
        let apart = self.cell.product_apart();
        let rows = steps * batch;
        assert!(!cache.gates_hold_grads, "backward twice after one forward: the cache's gate activations are spent");
        ensure_shape(&mut grads.dg_rec, if apart { rows } else { 0 }, g);
        ensure_shape(&mut grads.dh, batch, h);
        ensure_shape(&mut grads.dc, batch, hc);
        grads.dh.fill(T::zero());
        grads.dc.fill(T::zero());
        grads.h_grad_norms.clear();
        grads.h_grad_norms.resize(steps, 0.0);

        // The recurrence backwards, on one or two halves of the batch as in the forward.
        let Grads { dg_rec, dh, dc, h_grad_norms, wh, wh_panels, norm_sums, input_sums, .. } = grads;
        // ∂L/∂h_{t-1} = ∂L/∂z_t · W_h at every step: W_h (G·H, H) packed once for the window's
        // steps, or (where the panels do not apply) copied row-major for faer, which would pack
        // a transposed view again at every step (143 vs 220 GFLOP/s on char's
        // 32×2048·2048×512, examples/gemm_shapes)
        let step_rows = if steps::splits(batch) { batch / 2 } else { batch };
        let wh = if PanelMatrix::useful::<T>(step_rows, self.precision) {
            wh_panels.pack(cache.wh_t.t(), step_rows, self.precision)
        } else {
            ensure_shape(wh, g, h);
            wh.assign(&cache.wh_t.t());
            FixedRhs::plain(wh.view())
        };
        let normed = self.norm_h.is_some();
        let (rr, rc) = self.norm_h.as_ref().map_or((0, 0), |n| (n.rstd_rows_per_step(batch), n.rstd_cols()));
        // N_h's γ, β gradients: summed by the steps, per group of rows (see `param_groups`)
        ensure_shape(norm_sums, if normed { steps::param_groups(batch) } else { 0 }, 2 * g);
        norm_sums.fill(T::zero());
        // The input side's gradients step by step, while ∂L/∂G_t is in cache, where the forward
        // wrote the input side step by step: token rows (a vocabulary small beside the window,
        // as for N_x's table: the steps add each row into its token's row of a per-group
        // ∂L/∂W_xᵀ) and a narrow dense input of which no ∂L/∂x is asked, with no N_x or one
        // whose x̂_x is tabled or recomputed (`steps::StepInputGrad`).
        let groups = steps::param_groups(batch);
        let small_vocab = |ids: &[u32]| self.input_size * input_norm::TABLE_MAX_SHARE <= ids.len();
        let stepwise = match (&self.norm_x, input) {
            (None, LayerInput::OneHot(ids)) => small_vocab(ids),
            (None, LayerInput::Dense(x)) => x.ncols() <= input_norm::RECOMPUTE_MAX_INPUT && d_input.is_none(),
            (Some(_), input) => {
                input_norm::backward_in_time_loop(cache.xhat_x_source)
                    && d_input.is_none()
                    && match input {
                        LayerInput::OneHot(ids) => small_vocab(ids),
                        LayerInput::Dense(_) => true,
                    }
            }
        };
        ensure_shape(input_sums, if stepwise { groups } else { 0 }, (self.input_size + 3) * g);
        input_sums.fill(T::zero());
        // batch norm's halves join their column sums at every step: N_h's through `exchange`,
        // N_x's through its own
        let (exchange, exchange_x) = (Exchange::new(), Exchange::new());
        let step_nx = match &self.norm_x {
            Some(nx) if stepwise => {
                let levels = cache.xhat_x_source == input_norm::XhatX::Levels;
                let batch_norm = !nx.row_local();
                let table = match input {
                    _ if batch_norm => cache.wx_t.view(),
                    LayerInput::Dense(_) if !levels => cache.wx_t.view(),
                    _ => cache.xhat_x.view(),
                };
                ensure_shape(&mut grads.xnorm_scratch, 4 * batch, g);
                let rr = nx.rstd_rows_per_step(batch);
                Some(steps::StepNx {
                    norm: nx,
                    table,
                    levels: levels
                        .then(|| ArrayView2::from_shape((steps, batch), &cache.level_ids[..]).expect("T·B levels")),
                    rstd: cache.rstd_x.view().into_shape_with_order((steps, rr, nx.rstd_cols())).unwrap(),
                    scratch: grads.xnorm_scratch.view_mut().into_shape_with_order((4, batch, g)).unwrap(),
                    batch: batch_norm.then(|| steps::StepNxBatch {
                        mean: super::cache::means(&cache.bn_stats_x),
                        rows_total: batch,
                        exchange: &exchange_x,
                        peer: None,
                        work: Default::default(),
                    }),
                })
            }
            _ => None,
        };
        let input_grad = StepInputGrad {
            rows: match input {
                _ if !stepwise => None,
                LayerInput::OneHot(ids) => {
                    Some(InputRows::Tokens(ArrayView2::from_shape((steps, batch), ids).expect("T·B token ids")))
                }
                LayerInput::Dense(x) => Some(InputRows::Narrow(by_step(x, steps, batch))),
            },
            nx: step_nx,
            sums: input_sums.view_mut(),
        };
        cache.gates_hold_grads = true;
        let window = GradWindowRows {
            gates: cache.gates.view_mut().into_shape_with_order((steps, batch, g)).unwrap(),
            hs: cache.hs.view().into_shape_with_order((steps + 1, batch, h)).unwrap(),
            cs: cache.cs.view().into_shape_with_order((steps + 1, batch, hc)).unwrap(),
            aux: cache.aux.view().into_shape_with_order((steps, batch, cache.aux.ncols())).unwrap(),
            d_out: StepsGrad::new(&d_out, steps, batch),
            dh: dh.view_mut(),
            dc: dc.view_mut(),
            dg_rec: if apart {
                dg_rec.view_mut().into_shape_with_order((steps, batch, g)).unwrap()
            } else {
                empty3(steps)
            },
            groups,
            input: input_grad,
            norm: StepNorm::new(self.norm_h.as_mut(), true, Some(&exchange)),
            xz: if normed {
                cache.xhat_h.view_mut().into_shape_with_order((steps, batch, g)).unwrap()
            } else {
                empty3(steps)
            },
            rstd: if normed {
                cache.rstd_h.view().into_shape_with_order((steps, rr, rc)).unwrap()
            } else {
                empty_view3(steps)
            },
            sums: norm_sums.view_mut(),
        };
        let sq = std::sync::Mutex::new(vec![0.0f64; steps]);
        with_cell!(self.cell, C => steps::split_batch(window, batch, &|r: GradWindowRows<T>, par| {
            let part = steps::backward::<C, T>(r, wh, h, par);
            let mut total = sq.lock().unwrap();
            total.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }));
        for (n, s) in h_grad_norms.iter_mut().zip(sq.into_inner().unwrap()) {
            *n = s.sqrt();
        }
        // ∂L/∂(the recurrent product after its normalizer): the input side's for the LSTM, the
        // cell's own for the GRU, whose b_hn it also gives (its last gate block).
        let d_rec = if apart { grads.dg_rec.view() } else { cache.gates.view() };
        if let Some(b) = &mut self.bias_hn {
            let db = d_rec.slice(s![.., 2 * h..3 * h]).sum_axis(Axis(0));
            b.grad.row_mut(0).zip_mut_with(&db, |a, &d| *a += d);
        }
        if let Some(nh) = &mut self.norm_h {
            nh.add_param_sums(grads.norm_sums.view());
        }

        // Window-batched weight gradients w.r.t. the effective weights (in the products'
        // transposed layout or in W's own: `weight_grad`); with a normalizer, the steps left
        // ∂L/∂z_h in x̂_h's place.
        let d_zh = if normed { cache.xhat_h.view() } else { d_rec };
        let hs = cache.hs.slice(s![..rows, ..]);
        let (panels, precision, wn_h) = (&mut grads.dz_panels, self.precision, self.wn_gain_h.is_some());
        let dwh_layout = weight_grad(panels, precision, wn_h, hs, d_zh, &mut grads.dwh);
        // ∂L/∂(W_x·x): through N_x when there is one, into x̂_h's buffer (free again now),
        // unless the steps took it
        if let Some(nx) = self.norm_x.as_mut().filter(|_| !stepwise) {
            input_norm::backward(nx, input, cache, &mut grads.xnorm_scratch);
        }
        // ∂L/∂W_x's layout: the steps' sums and token rows give the transposed one
        let mut dwx_layout = Layout::Transposed;
        if stepwise {
            ensure_shape(&mut grads.dwx, self.input_size, g);
            // summed by the steps, per group: the groups added in order
            let (wx_len, sums) = (self.input_size * g, &grads.input_sums);
            let dwx = grads.dwx.as_slice_mut().expect("a standard-layout gradient");
            let mut db = vec![T::zero(); g];
            dwx.fill(T::zero());
            for row in sums.rows() {
                let row = row.to_slice().expect("contiguous sums");
                dwx.iter_mut().zip(&row[..wx_len]).for_each(|(d, &v)| *d += v);
                db.iter_mut().zip(&row[wx_len..wx_len + g]).for_each(|(d, &v)| *d += v);
            }
            self.bias.grad.row_mut(0).iter_mut().zip(&db).for_each(|(a, &b)| *a += b);
            if let Some(nx) = &mut self.norm_x {
                nx.add_param_sums(sums.slice(s![.., wx_len + g..]));
            }
        } else {
            // Two window passes over two different buffers: ∂L/∂b = Σ_rows ∂L/∂G, and ∂L/∂W_x
            // (with ∂L/∂x) from ∂L/∂(W_x·x). Each takes a thread and streams whole rows
            // (`tensor::rows` says why not half of every row on each thread); every output is
            // formed by one thread in row order, so the bits do not depend on the thread count.
            let d_zx = if self.norm_x.is_some() { cache.xhat_h.view() } else { cache.gates.view() };
            let (gates, wx_t, precision) = (cache.gates.view(), cache.wx_t.view(), self.precision);
            let (dwx, dz_panels) = (&mut grads.dwx, &mut grads.dz_panels);
            let (input_size, wn_x) = (self.input_size, self.wn_gain_x.is_some());
            let (db, layout) = rayon::join(
                || column_sums(gates),
                || match input {
                    LayerInput::OneHot(ids) => {
                        ensure_shape(dwx, input_size, g);
                        dwx.fill(T::zero());
                        add_rows_at(dwx.view_mut(), ids, d_zx);
                        Layout::Transposed
                    }
                    LayerInput::Dense(x) => {
                        let layout = weight_grad(dz_panels, precision, wn_x, x, d_zx, dwx);
                        if let Some(dx) = d_input {
                            gemm(dx, false, d_zx, wx_t.t(), T::one());
                        }
                        layout
                    }
                },
            );
            dwx_layout = layout;
            self.bias.grad.row_mut(0).zip_mut_with(&db, |a, &b| *a += b);
        }

        // Back through weight norm, then straight through the quantizer to the latent weights.
        backward_one(&mut self.w_x, self.wn_gain_x.as_mut(), &cache.qx_t, &grads.dwx, dwx_layout);
        backward_one(&mut self.w_h, self.wn_gain_h.as_mut(), &cache.qh_t, &grads.dwh, dwh_layout);
    }
}

/// Where a weight's window gradient was formed (`weight_grad`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// As the products lay the weight out: ∂L/∂Wᵀ, (in, G·H).
    Transposed,
    /// In W's own layout: ∂L/∂W, (G·H, in).
    Direct,
}

/// ∂L/∂(effective W) = Σ over the window's rows of x ⊗ ∂L/∂z (X: (rows, in), ∂L/∂Z: (rows, G·H)):
/// into `out` in W's own layout, ∂L/∂Zᵀ·X (G·H, in), where that gives the bits Xᵀ·∂L/∂Z gives
/// (both products on the window kernel, `runs_window_kernel`) and nothing needs the transpose
/// (f32; no weight norm, whose backward reads ∂L/∂Wᵀ); else Xᵀ·∂L/∂Z (in, G·H), as the products
/// lay W out. Returns which. In W's layout the latent gradient is added to contiguously
/// (`backward_one`) instead of by a pass that reads one of the two across its rows (word2, one
/// thread, AMD Zen 4: steps 1.02× faster).
fn weight_grad<T: Real>(
    panels: &mut PanelMatrix,
    precision: Precision,
    weight_norm: bool,
    x: ArrayView2<T>,
    dz: ArrayView2<T>,
    out: &mut Array2<T>,
) -> Layout {
    let direct_pays = precision == Precision::F32
        && !weight_norm
        && runs_window_kernel(dz.t(), x, true)
        && runs_window_kernel(x.t(), dz, true);
    if direct_pays {
        ensure_shape(out, dz.ncols(), x.ncols());
        gemm(out.view_mut(), false, dz.t(), x, T::one());
        Layout::Direct
    } else {
        ensure_shape(out, x.ncols(), dz.ncols());
        panels.gemm_once(precision, out.view_mut(), false, x.t(), dz);
        Layout::Transposed
    }
}

/// A dense input's rows (T·B, in) as (T, B, in).
fn by_step<T>(x: ArrayView2<'_, T>, steps: usize, batch: usize) -> ArrayView3<'_, T> {
    let w = x.ncols();
    x.into_shape_with_order((steps, batch, w)).expect("T·B contiguous input rows")
}

/// A (0, 0) view, for the normalizer scratch of a layer without one.
fn empty2<'a, T>() -> ArrayViewMut2<'a, T> {
    ArrayViewMut2::from_shape((0, 0), &mut []).unwrap()
}

/// A (steps, 0, 0) view: `steps` empty caches, for a layer without a recurrent normalizer.
fn empty3<'a, T>(steps: usize) -> ArrayViewMut3<'a, T> {
    ArrayViewMut3::from_shape((steps, 0, 0), &mut []).unwrap()
}

fn empty_view3<'a, T>(steps: usize) -> ndarray::ArrayView3<'a, T> {
    ndarray::ArrayView3::from_shape((steps, 0, 0), &[]).unwrap()
}

/// The curvature d = √v + 1e-8 of a latent weight for a loss-aware quantizer, into `d` (this
/// window's); None where the quantizer has no use for it or no Adam step has been taken yet.
fn curvature<'a, T: Real>(q: Quantizer, w: &Param<T>, d: &'a mut Array2<T>) -> Option<&'a Array2<T>> {
    let v = w.moments.as_ref().filter(|_| q.uses_curvature())?.v.view();
    ensure_shape(d, v.nrows(), v.ncols());
    d.zip_mut_with(&v, |d, &v| *d = v.sqrt() + T::r(1e-8));
    Some(d)
}

/// W (G·H, in) latent → Q(W) per gate block → weight norm → effective, all transposed (in, G·H).
/// Without weight norm Q(W) is the effective weight: it goes straight into `eff_t` and `q_t`
/// is left empty (`Cache::quantized_input_t` then reads `eff_t`), one copy of W fewer a step.
fn prepare_one<T: Real>(
    w: ArrayView2<T>,
    blocks: usize,
    quantizer: Quantizer,
    curvature: Option<&Array2<T>>,
    gain: Option<&Param<T>>,
    q_t: &mut Array2<T>,
    eff_t: &mut Array2<T>,
) {
    let (g, inp) = w.dim();
    ensure_shape(eff_t, inp, g);
    let out = if gain.is_some() {
        ensure_shape(q_t, inp, g);
        &mut *q_t
    } else {
        *q_t = Array2::zeros((0, 0));
        &mut *eff_t
    };
    let hidden = g / blocks;
    for k in 0..blocks {
        let rows = s![k * hidden..(k + 1) * hidden, ..];
        let d = curvature.map(|c| c.slice(rows));
        quant::quantize_block(
            quantizer,
            w.slice(rows),
            d,
            out.slice_mut(s![.., k * hidden..(k + 1) * hidden]).reversed_axes(),
        );
    }
    if let Some(g) = gain {
        weight_norm::forward(q_t.view(), g.value.row(0), eff_t.view_mut());
    }
}

/// ∂L/∂effective, in `layout` (`weight_grad`) → gains' grads (weight norm) and latent grads
/// (G·H, in) via the STE.
fn backward_one<T: Real>(
    w: &mut Param<T>,
    gain: Option<&mut Param<T>>,
    q_t: &Array2<T>,
    d_eff: &Array2<T>,
    layout: Layout,
) {
    match (gain, layout) {
        (None, Layout::Direct) => w.grad.zip_mut_with(d_eff, |a, &b| *a += b),
        (None, Layout::Transposed) => zip_tiled(w.grad.view_mut(), d_eff.t(), |a, &b| *a += b),
        (Some(g), Layout::Transposed) => {
            let mut dg = g.grad.row_mut(0);
            weight_norm::backward(
                q_t.view(),
                g.value.row(0),
                d_eff.view(),
                dg.view_mut(),
                w.grad.view_mut().reversed_axes(),
            );
        }
        (Some(_), Layout::Direct) => unreachable!("weight norm's backward reads ∂L/∂Wᵀ: `weight_grad` forms it"),
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    use super::{Layout, weight_grad};
    use crate::tensor::{PanelMatrix, Precision, Simd, gemm, set_threads, simd, threads};

    /// A weight gradient formed in W's own layout (∂L/∂Zᵀ·X) is the transpose of the one the
    /// products' layout gives (Xᵀ·∂L/∂Z) bit for bit, on one thread and two, where the window
    /// kernel takes both (word2's W_h-sized shape; on AVX2 also MNIST's 100-wide H); under weight
    /// norm, or for products the kernel does not take both ways, the transposed one is formed.
    #[test]
    fn weight_gradients_in_w_layout_are_the_transposed_ones_bits() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(11);
        let mut random = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.random_range(-1.0f32..1.0));
        let before = threads();
        for threads in [1, 2] {
            set_threads(threads);
            for (rows, input, g) in [(700, 650, 2600), (1000, 300, 1200), (6272, 100, 400), (300, 20, 80)] {
                let (x, dz) = (random(rows, input), random(rows, g));
                let mut want = Array2::<f32>::zeros((input, g));
                gemm(want.view_mut(), false, x.t(), dz.view(), 1.0);
                for weight_norm in [false, true] {
                    let (mut panels, mut out) = (PanelMatrix::default(), Array2::zeros((0, 0)));
                    let layout = weight_grad(&mut panels, Precision::F32, weight_norm, x.view(), dz.view(), &mut out);
                    let what = format!("{rows}×{input}·{g}, {threads} threads, weight norm {weight_norm}");
                    let got = match layout {
                        Layout::Direct => out.t().to_owned(),
                        Layout::Transposed => out,
                    };
                    assert!(
                        want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}: not the same bits"
                    );
                    // W's layout: never under weight norm, nor for a product too small for the
                    // kernel; always for word2's on a CPU with the kernel
                    if weight_norm || rows * input * g < 1 << 22 {
                        assert_eq!(layout, Layout::Transposed, "{what}");
                    } else if input == 650 && simd() >= Simd::Avx2 {
                        assert_eq!(layout, Layout::Direct, "{what}");
                    }
                }
            }
        }
        set_threads(before);
    }
}
