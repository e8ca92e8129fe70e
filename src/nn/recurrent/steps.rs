//! The one time loop of a recurrent layer. Per step t, forward:
//!   G_t += N_h(h_{t-1}·W_hᵀ)      (the recurrent product and its normalizer: `StepNorm`; a
//!                                  cell that takes the product apart gets it in R_t instead)
//!   cell(G_t, state_{t-1}) → state_t
//! and backward, from the last step to the first:
//!   cell⁻¹ → ∂L/∂G_t (and ∂L/∂R_t);   ∂L/∂h_{t-1} (+)= N_h⁻¹(∂L/∂G_t or ∂L/∂R_t) · W_h
//! Everything that can be batched over the window (the input projection of a wide input, the
//! weight gradients) happens outside, in `layer.rs`: only this product, the cell and, where
//! its product is cheap, the input side of G_t (`StepInput`; its gradients, `StepInputGrad`)
//! are per step.
//!
//! With two threads each thread takes half of the batch through the whole window. When the
//! rows of a step never interact (no recurrent normalizer, or a row-local one such as layer
//! norm, or batch norm in evaluation, on its running statistics) there is no join per step;
//! batch norm in training couples the rows of a step through its statistics, so its halves
//! exchange their column sums at every step (`exchange.rs`: two short waits forward, one
//! backward, and one more backward where batch norm's N_x runs in the loop). One thread runs
//! the whole batch, as before.

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis, s};

use super::exchange::{Exchange, Peer};
use super::{Cell, StepGradRows, StepRows};
use crate::nn::norm::{Normalizer, PartWork};
use crate::nn::packed::WeightsRef;
use crate::tensor::{FixedRhs, Real, threads};

/// The normalizer of the recurrent product, as one step of the time loop uses it.
pub(super) enum StepNorm<'a, T> {
    /// No normalizer: G_t += h_{t-1}·W_hᵀ straight from the GEMM.
    None,
    /// A row-local normalizer (layer norm): runs on any rows, from any thread. (Every
    /// normalizer's γ, β gradients are summed by the backward's steps into the window's
    /// `GradWindowRows::sums`, per group of rows, which the layer adds afterwards.)
    Rows(&'a Normalizer<T>),
    /// A normalizer whose statistics need the whole batch of a step (batch norm), on all rows:
    /// it updates its running statistics step by step (in training). `exchange` lets it be
    /// split into two `BatchPart`s.
    Batch { norm: &'a mut Normalizer<T>, train: bool, exchange: Option<&'a Exchange<T>> },
    /// Batch norm on one half of the rows, its statistics joined with the other half's through
    /// `peer` (in training); the running statistics are left to the layer, after the window
    /// (`Normalizer::forward_part`).
    BatchPart { norm: &'a Normalizer<T>, train: bool, peer: Peer<'a, T>, rows_total: usize, work: PartWork<T> },
}

impl<'a, T: Real> StepNorm<'a, T> {
    pub(super) fn new(norm: Option<&'a mut Normalizer<T>>, train: bool, exchange: Option<&'a Exchange<T>>) -> Self {
        match norm {
            None => StepNorm::None,
            Some(n) if n.row_local() => StepNorm::Rows(n),
            Some(n) => StepNorm::Batch { norm: n, train, exchange },
        }
    }

    /// The normalizer for the two halves of a batch of `rows` rows, if it can run on halves.
    fn halves(self, rows: usize) -> Result<(Self, Self), Self> {
        match self {
            StepNorm::None => Ok((StepNorm::None, StepNorm::None)),
            StepNorm::Rows(n) => Ok((StepNorm::Rows(n), StepNorm::Rows(n))),
            StepNorm::Batch { norm, train, exchange: Some(ex) } => {
                let norm: &'a Normalizer<T> = norm;
                let part = |me| StepNorm::BatchPart {
                    norm,
                    train,
                    peer: ex.peer(me),
                    rows_total: rows,
                    work: PartWork::default(),
                };
                Ok((part(0), part(1)))
            }
            b @ (StepNorm::Batch { exchange: None, .. } | StepNorm::BatchPart { .. }) => Err(b),
        }
    }

    /// Halves that exchange statistics at every step and so must run at the same time.
    fn joined(&self) -> bool {
        matches!(self, StepNorm::BatchPart { .. })
    }

    /// A batch normalizer's 1/σ is one row per step, which both halves read in the backward.
    fn shares_rstd(&self) -> bool {
        matches!(self, StepNorm::Batch { .. } | StepNorm::BatchPart { .. })
    }
}

/// The input side of G_t, b + N_x(x_t·W_xᵀ), where the time loop writes it one step at a time,
/// just before the recurrent product adds into G_t. For inputs whose product is cheap (token
/// rows, a narrow dense input) the step's G_t is then still in cache for the product and the
/// cell, instead of read back from a window-wide pass written long before (sequential MNIST's
/// window is 125 MB). Each variant computes G_t with the kernels and in the order the window
/// pass would, so the numbers are the same.
pub(super) enum StepInput<'a, T> {
    /// `layer.rs` wrote G = b + N_x(X·W_xᵀ) for the whole window (wide inputs, whose product is
    /// a real GEMM; token ids under layer norm from a vocabulary too large for a table, or
    /// under batch norm in an exported layer).
    Window,
    /// Token ids, (T, rows): G_t = W_x[id] + b.
    Tokens { wx: WeightsRef<'a, T>, ids: ArrayView2<'a, u32>, bias: &'a [T] },
    /// Token ids through layer norm's table of W_x's rows, or a narrow input's levels through
    /// the table of their products (`input_norm.rs`): G_t = b + (γ ⊙ x̂ + β)[id], and the row's
    /// 1/σ into `rstd`, (T, rows, blocks).
    Table {
        table: ArrayView2<'a, T>,
        rstd_table: ArrayView2<'a, T>,
        ids: ArrayView2<'a, u32>,
        bias: &'a [T],
        rstd: ArrayViewMut3<'a, T>,
    },
    /// A narrow dense input x, (T, rows, in): G_t = x_t·W_xᵀ + b.
    Narrow { wx: WeightsRef<'a, T>, x: ArrayView3<'a, T>, bias: &'a [T] },
    /// The same through a row-local normalizer (layer norm), whose x̂ backward recomputes: the
    /// step's product into `z`, its x̂ into `xhat` (scratch, (rows, G·H) each), 1/σ into `rstd`,
    /// (T, rows, blocks), and G_t = b, then += γ ⊙ x̂ + β.
    NarrowNormed {
        wx: WeightsRef<'a, T>,
        x: ArrayView3<'a, T>,
        bias: &'a [T],
        norm: &'a Normalizer<T>,
        z: ArrayViewMut2<'a, T>,
        xhat: ArrayViewMut2<'a, T>,
        rstd: ArrayViewMut3<'a, T>,
    },
    /// Batch norm of token rows or of a narrow input's product, with the step's μ and 1/σ of
    /// the whole batch that `input_norm::forward` took before the loop (`mean`, `rstd`, (T,
    /// G·H) each), so each row is normalized on its own: the step's rows of W_x or its product
    /// into `z` (scratch, (rows, G·H)), and G_t = b, then += γ ⊙ x̂ + β (x̂ not kept: the
    /// backward forms it again from the same product).
    BatchNormed {
        wx: WeightsRef<'a, T>,
        input: InputRows<'a, T>,
        bias: &'a [T],
        norm: &'a Normalizer<T>,
        mean: ArrayView2<'a, T>,
        rstd: ArrayView2<'a, T>,
        z: ArrayViewMut2<'a, T>,
    },
}

impl<T: Real> StepInput<'_, T> {
    /// Write step t's input side into `gates` (the step's rows of G).
    fn write(&mut self, t: usize, mut gates: ArrayViewMut2<T>) {
        let set_bias = |gates: &mut ArrayViewMut2<T>, bias: &[T]| {
            for mut row in gates.rows_mut() {
                row.as_slice_mut().expect("contiguous rows").copy_from_slice(bias);
            }
        };
        // over slices, so that it vectorizes (an ndarray row iterator did not: 4.5 % of an MNIST
        // bc/none step, scalar)
        let add_bias = |gates: &mut ArrayViewMut2<T>, bias: &[T]| {
            for mut row in gates.rows_mut() {
                let row = row.as_slice_mut().expect("contiguous rows");
                row.iter_mut().zip(bias).for_each(|(g, &b)| *g += b);
            }
        };
        match self {
            StepInput::Window => {}
            StepInput::Tokens { wx, ids, bias } => {
                wx.gather(gates.view_mut(), ids.row(t).to_slice().expect("a step's ids are contiguous"));
                add_bias(&mut gates, bias);
            }
            StepInput::Table { table, rstd_table, ids, bias, rstd } => {
                // b + (γ ⊙ x̂ + β)[id] in one pass over the row (as b, then += the entry)
                let mut rstd = rstd.index_axis_mut(Axis(0), t);
                for ((mut row, mut inv), &id) in gates.rows_mut().into_iter().zip(rstd.rows_mut()).zip(ids.row(t)) {
                    let (row, y) = (row.as_slice_mut().expect("contiguous rows"), table.row(id as usize));
                    let y = y.to_slice().expect("contiguous table rows");
                    row.iter_mut().zip(bias.iter().zip(y)).for_each(|(o, (&b, &y))| *o = b + y);
                    inv.assign(&rstd_table.row(id as usize));
                }
            }
            StepInput::Narrow { wx, x, bias } => {
                wx.product(gates.view_mut(), false, x.index_axis(Axis(0), t), false);
                add_bias(&mut gates, bias);
            }
            StepInput::NarrowNormed { wx, x, bias, norm, z, xhat, rstd } => {
                set_bias(&mut gates, bias);
                wx.product(z.view_mut(), false, x.index_axis(Axis(0), t), false);
                norm.forward_rows(z.view(), xhat.view_mut(), rstd.index_axis_mut(Axis(0), t), gates);
            }
            StepInput::BatchNormed { wx, input, bias, norm, mean, rstd, z } => {
                set_bias(&mut gates, bias);
                input.product(*wx, t, z.view_mut());
                let (mean, inv_r) = (mean.row(t), rstd.row(t));
                let (mean, inv_r) = (mean.to_slice().expect("contiguous"), inv_r.to_slice().expect("contiguous"));
                norm.batch_apply_out(z.view(), mean, inv_r, gates);
            }
        }
    }

    /// The input side of the first `m` rows and of the rest.
    fn split(self, m: usize) -> (Self, Self) {
        match self {
            StepInput::Window => (StepInput::Window, StepInput::Window),
            StepInput::Tokens { wx, ids, bias } => {
                let (i0, i1) = ids.split_at(Axis(1), m);
                (StepInput::Tokens { wx, ids: i0, bias }, StepInput::Tokens { wx, ids: i1, bias })
            }
            StepInput::Table { table, rstd_table, ids, bias, rstd } => {
                let (i0, i1) = ids.split_at(Axis(1), m);
                let (r0, r1) = rstd.split_at(Axis(1), m);
                (
                    StepInput::Table { table, rstd_table, ids: i0, bias, rstd: r0 },
                    StepInput::Table { table, rstd_table, ids: i1, bias, rstd: r1 },
                )
            }
            StepInput::Narrow { wx, x, bias } => {
                let (x0, x1) = x.split_at(Axis(1), m);
                (StepInput::Narrow { wx, x: x0, bias }, StepInput::Narrow { wx, x: x1, bias })
            }
            StepInput::NarrowNormed { wx, x, bias, norm, z, xhat, rstd } => {
                let (x0, x1) = x.split_at(Axis(1), m);
                let (z0, z1) = z.split_at(Axis(0), m);
                let (h0, h1) = xhat.split_at(Axis(0), m);
                let (r0, r1) = rstd.split_at(Axis(1), m);
                (
                    StepInput::NarrowNormed { wx, x: x0, bias, norm, z: z0, xhat: h0, rstd: r0 },
                    StepInput::NarrowNormed { wx, x: x1, bias, norm, z: z1, xhat: h1, rstd: r1 },
                )
            }
            StepInput::BatchNormed { wx, input, bias, norm, mean, rstd, z } => {
                let (i0, i1) = input.split(m);
                let (z0, z1) = z.split_at(Axis(0), m);
                (
                    StepInput::BatchNormed { wx, input: i0, bias, norm, mean, rstd, z: z0 },
                    StepInput::BatchNormed { wx, input: i1, bias, norm, mean, rstd, z: z1 },
                )
            }
        }
    }
}

/// The input side's gradients where the backward loop takes them step by step, while ∂L/∂G_t
/// is in cache (for the inputs the forward wrote step by step, `StepInput`): ∂L/∂b = Σ ∂L/∂G,
/// N_x's backward (x̂_x from the table or recomputed, then ∂L/∂z_x and
/// Σ dy ⊙ x̂, Σ dy for γ_x, β_x), and ∂L/∂W_x = Σ x ⊗ ∂L/∂z_x (∂L/∂G without N_x). `sums`
/// holds, per group of rows (`param_groups`), ∂L/∂W_xᵀ's `in` rows of G·H, ∂L/∂b's G·H, then
/// γ_x's and β_x's G·H each (zero without N_x). `rows` None: `layer.rs` takes all of it over
/// the window, after the loop.
pub(super) struct StepInputGrad<'a, T> {
    pub rows: Option<InputRows<'a, T>>,
    pub nx: Option<StepNx<'a, T>>,
    pub sums: ArrayViewMut2<'a, T>,
}

/// A layer's input as the steps read it.
pub(super) enum InputRows<'a, T> {
    /// Token ids, (T, rows): a row's gradient is added to its token's row of ∂L/∂W_xᵀ.
    Tokens(ArrayView2<'a, u32>),
    /// A narrow dense input, (T, rows, in).
    Narrow(ArrayView3<'a, T>),
}

impl<T: Real> InputRows<'_, T> {
    /// Step t's raw product W_x·x_t into `z`: the ids' rows of W_x, or a narrow input's product.
    fn product(&self, wx: WeightsRef<T>, t: usize, z: ArrayViewMut2<T>) {
        match self {
            InputRows::Tokens(ids) => wx.gather(z, ids.row(t).to_slice().expect("a step's ids are contiguous")),
            InputRows::Narrow(x) => wx.product(z, false, x.index_axis(Axis(0), t), false),
        }
    }
}

impl<'a, T> InputRows<'a, T> {
    /// The first `m` rows of every step and the rest.
    fn split(self, m: usize) -> (Self, Self) {
        match self {
            InputRows::Tokens(ids) => {
                let (i0, i1) = ids.split_at(Axis(1), m);
                (InputRows::Tokens(i0), InputRows::Tokens(i1))
            }
            InputRows::Narrow(x) => {
                let (x0, x1) = x.split_at(Axis(1), m);
                (InputRows::Narrow(x0), InputRows::Narrow(x1))
            }
        }
    }
}

/// N_x's backward one step at a time (`input_norm.rs` has the window's version): layer norm,
/// or batch norm (`batch`), whose ∂L/∂z_x needs column means of the whole step's batch.
pub(super) struct StepNx<'a, T> {
    pub norm: &'a Normalizer<T>,
    /// Layer norm: x̂ of W_x's rows, (vocab, G·H), for token ids; for a narrow input, x̂ of its
    /// levels' products, (levels, G·H), or else W_xᵀ, (in, G·H), to recompute its product.
    /// Batch norm: W_xᵀ, (in, G·H), whose rows token ids gather or whose product a narrow input
    /// forms again, as the forward did.
    pub table: ArrayView2<'a, T>,
    /// A narrow input's row levels, (T, rows), where its x̂ is tabled (`input_norm::XhatX::Levels`).
    pub levels: Option<ArrayView2<'a, u32>>,
    /// The forward's 1/σ: layer norm's (T, rows, blocks); batch norm's (T, 1, G·H), the
    /// whole batch's, which both halves read.
    pub rstd: ArrayView3<'a, T>,
    /// (4, rows, G·H): the recomputed product z, x̂ (then ∂L/∂z_x in its place), the
    /// normalizer's discarded output, and its discarded 1/σ in the first `blocks` columns.
    pub scratch: ArrayViewMut3<'a, T>,
    /// Batch norm's means and join of the halves; None for layer norm.
    pub batch: Option<StepNxBatch<'a, T>>,
}

/// What batch norm's N_x adds to a `StepNx`: the forward's μ of every step, and the join of
/// the halves' column sums (Σ γ⊙dy, Σ γ⊙dy⊙x̂) at every step, as N_h's backward joins its
/// own (`exchange.rs`; a second `Exchange`, so that the two joins of a step cannot mix).
pub(super) struct StepNxBatch<'a, T> {
    /// μ of every step, (T, G·H).
    pub mean: ArrayView2<'a, T>,
    /// The rows of a step in both halves.
    pub rows_total: usize,
    pub exchange: &'a Exchange<T>,
    /// This half's end of `exchange`, once the batch is split; None on the whole batch.
    pub peer: Option<Peer<'a, T>>,
    pub work: PartWork<T>,
}

impl<T: Real> StepInputGrad<'_, T> {
    /// Add step t's part, from its ∂L/∂G_t `dg` (this part's rows), rows before `split_at` to
    /// the first group. ∂L/∂b (and a narrow input's ∂L/∂W_x, and γ_x's, β_x's) take the step's
    /// sum first, then add it to the window's; a token's row of W_x adds each row directly (a
    /// per-step sum of all `in` rows would cost a pass over vocab × G·H per step).
    /// `step` holds `step_len` values, `step_norm` 2·G·H per group.
    fn add_step(&mut self, t: usize, dg: ArrayView2<T>, split_at: usize, step: &mut [T], step_norm: &mut [T]) {
        let StepInputGrad { rows: Some(input), nx, sums } = self else { return };
        let (g, width) = (dg.ncols(), sums.ncols());
        let wx_len = width - 3 * g;
        let group = |r: usize| usize::from(r >= split_at);
        step.iter_mut().for_each(|v| *v = T::zero());
        // per group: a narrow input's ∂L/∂W_x then ∂L/∂b; ∂L/∂b alone for token ids
        let step_width = step.len() / sums.nrows();
        for (r, d) in dg.rows().into_iter().enumerate() {
            let db = &mut step[(group(r) + 1) * step_width - g..(group(r) + 1) * step_width];
            db.iter_mut().zip(d.to_slice().expect("contiguous rows")).for_each(|(b, &v)| *b += v);
        }
        // ∂L/∂(W_x·x): through N_x when the steps take it
        let d_in = match nx {
            None => dg,
            Some(nx) => {
                let (mut z, mut xz, out, rs) =
                    nx.scratch.multi_slice_mut((s![0, .., ..], s![1, .., ..], s![2, .., ..], s![3, .., ..]));
                let rstd = nx.rstd.index_axis(Axis(0), t);
                match input {
                    // batch norm: the step's product as the forward formed it (`StepInput::
                    // BatchNormed`), then x̂ from the forward's μ and 1/σ
                    _ if let Some(bn) = &nx.batch => {
                        input.product(WeightsRef::dense(nx.table), t, z.view_mut());
                        let (mean, inv_r) = (bn.mean.row(t), rstd.row(0));
                        let (mean, inv_r) =
                            (mean.to_slice().expect("contiguous"), inv_r.to_slice().expect("contiguous"));
                        nx.norm.batch_xhat(z.view(), mean, inv_r, xz.view_mut());
                    }
                    InputRows::Tokens(ids) => {
                        for (mut row, &id) in xz.rows_mut().into_iter().zip(ids.row(t)) {
                            row.assign(&nx.table.row(id as usize));
                        }
                    }
                    InputRows::Narrow(_) if let Some(levels) = nx.levels => {
                        for (mut row, &l) in xz.rows_mut().into_iter().zip(levels.row(t)) {
                            row.assign(&nx.table.row(l as usize));
                        }
                    }
                    InputRows::Narrow(x) => {
                        // as the forward (and `input_norm`'s window backward) computed x̂
                        WeightsRef::dense(nx.table).product(z.view_mut(), false, x.index_axis(Axis(0), t), false);
                        super::input_norm::layer_xhat(nx.norm, z.view(), xz.view_mut(), out, rs);
                    }
                }
                step_norm.iter_mut().for_each(|v| *v = T::zero());
                match &mut nx.batch {
                    Some(bn) => {
                        let inv_r = rstd.row(0).to_slice().expect("contiguous");
                        let (peer, n, work) = (bn.peer.as_mut(), bn.rows_total, &mut bn.work);
                        nx.norm.input_grad_part_in_place(dg, xz.view_mut(), inv_r, peer, n, work, split_at, step_norm);
                    }
                    None => nx.norm.input_grad_rows_in_place(dg, xz.view_mut(), rstd, split_at, step_norm),
                }
                for (k, mut row) in sums.rows_mut().into_iter().enumerate() {
                    let acc = &mut row.as_slice_mut().expect("contiguous sums")[wx_len + g..];
                    acc.iter_mut().zip(&step_norm[k * 2 * g..(k + 1) * 2 * g]).for_each(|(a, &v)| *a += v);
                }
                let shape = xz.dim();
                ArrayView2::from_shape(shape, &*xz.into_slice().expect("a step's scratch rows are contiguous")).unwrap()
            }
        };
        // ∂L/∂W_xᵀ
        match input {
            InputRows::Tokens(ids) => {
                for (r, (d, &id)) in d_in.rows().into_iter().zip(ids.row(t)).enumerate() {
                    let mut row = sums.row_mut(group(r));
                    let w = &mut row.as_slice_mut().expect("contiguous sums")[id as usize * g..(id as usize + 1) * g];
                    w.iter_mut().zip(d.to_slice().expect("contiguous rows")).for_each(|(w, &v)| *w += v);
                }
            }
            InputRows::Narrow(x) => {
                for (r, (d, xr)) in d_in.rows().into_iter().zip(x.index_axis(Axis(0), t).rows()).enumerate() {
                    let part = &mut step[group(r) * step_width..];
                    let d = d.to_slice().expect("contiguous rows");
                    for (k, &xk) in xr.iter().enumerate() {
                        part[k * g..(k + 1) * g].iter_mut().zip(d).for_each(|(w, &v)| *w += xk * v);
                    }
                }
            }
        }
        // the step's sums into the window's: ∂L/∂W_xᵀ (narrow input) and ∂L/∂b
        for (k, mut row) in sums.rows_mut().into_iter().enumerate() {
            let row = row.as_slice_mut().expect("contiguous sums");
            let part = &step[k * step_width..(k + 1) * step_width];
            let at = wx_len + g - step_width;
            row[at..wx_len + g].iter_mut().zip(part).for_each(|(a, &v)| *a += v);
        }
    }

    /// Halves that join N_x's batch statistics at every step, and so must run at the same time.
    fn joined(&self) -> bool {
        self.nx.as_ref().is_some_and(|nx| nx.batch.as_ref().is_some_and(|b| b.peer.is_some()))
    }

    /// The length of the step scratch `add_step` needs, for G·H = `g`.
    fn step_len(&self, g: usize) -> usize {
        let groups = self.sums.nrows();
        match &self.rows {
            None => 0,
            Some(InputRows::Tokens(_)) => groups * g,
            Some(InputRows::Narrow(_)) => groups * (self.sums.ncols() - 2 * g),
        }
    }

    fn split(self, m: usize) -> (Self, Self) {
        let (rows0, rows1) = match self.rows.map(|r| r.split(m)) {
            None => (None, None),
            Some((r0, r1)) => (Some(r0), Some(r1)),
        };
        let (nx0, nx1) = match self.nx {
            None => (None, None),
            Some(StepNx { norm, table, levels, rstd, scratch, batch }) => {
                // batch norm's 1/σ is the whole batch's: both halves read all of it
                let (r0, r1) = if batch.is_some() { (rstd, rstd) } else { rstd.split_at(Axis(1), m) };
                let (s0, s1) = scratch.split_at(Axis(1), m);
                let (l0, l1) = match levels.map(|l| l.split_at(Axis(1), m)) {
                    Some((l0, l1)) => (Some(l0), Some(l1)),
                    None => (None, None),
                };
                let (b0, b1) = match batch {
                    Some(StepNxBatch { mean, rows_total, exchange, .. }) => {
                        let half = |me| StepNxBatch {
                            mean,
                            rows_total,
                            exchange,
                            peer: Some(exchange.peer(me)),
                            work: PartWork::default(),
                        };
                        (Some(half(0)), Some(half(1)))
                    }
                    None => (None, None),
                };
                (
                    Some(StepNx { norm, table, levels: l0, rstd: r0, scratch: s0, batch: b0 }),
                    Some(StepNx { norm, table, levels: l1, rstd: r1, scratch: s1, batch: b1 }),
                )
            }
        };
        let (s0, s1) = split_rows2(self.sums, 1);
        (StepInputGrad { rows: rows0, nx: nx0, sums: s0 }, StepInputGrad { rows: rows1, nx: nx1, sums: s1 })
    }
}

/// Some rows of the batch (all, or one half) over the whole window, as 3-D views
/// (time, row, ·): what the forward touches.
pub(super) struct WindowRows<'a, T> {
    pub gates: ArrayViewMut3<'a, T>,
    /// h_{-1} … h_{T-1} and c likewise: (T+1, rows, H) (c: width 0 for a cell without one)
    pub hs: ArrayViewMut3<'a, T>,
    pub cs: ArrayViewMut3<'a, T>,
    /// The cell's per-step buffer for its backward (LSTM tanh c, GRU u): (T, rows, H)
    pub aux: ArrayViewMut3<'a, T>,
    /// The step's recurrent product for a cell that takes it apart, (rows, G·H); empty otherwise.
    pub rec: ArrayViewMut2<'a, T>,
    pub rec_bias: &'a [T],
    /// The input side of G, when the loop writes it step by step.
    pub input: StepInput<'a, T>,
    pub norm: StepNorm<'a, T>,
    /// The in-window time index of the first step (batch norm's statistics slot).
    pub t0: usize,
    /// With a normalizer: the step's raw product (rows, G·H), x̂ (T, rows, G·H) and 1/σ
    /// (T, `rstd_rows_per_step`, `rstd_cols`); empty views without.
    pub z: ArrayViewMut2<'a, T>,
    pub xhat: ArrayViewMut3<'a, T>,
    pub rstd: ArrayViewMut3<'a, T>,
    /// Batch norm split over two threads in training: each step's μ and σ² (steps, 2·G·H) for
    /// the running statistics, recorded by the first half; empty otherwise.
    pub bn_stats: ArrayViewMut2<'a, T>,
}

/// What the backward touches, for the same rows. `gates` holds the activations on entry and
/// ∂L/∂G (the input side's pre-activation gradients) on exit, step by step.
pub(super) struct GradWindowRows<'a, T> {
    pub gates: ArrayViewMut3<'a, T>,
    pub hs: ArrayView3<'a, T>,
    pub cs: ArrayView3<'a, T>,
    pub aux: ArrayView3<'a, T>,
    pub d_out: StepsGrad<'a, T>,
    pub dh: ArrayViewMut2<'a, T>,
    pub dc: ArrayViewMut2<'a, T>,
    /// ∂L/∂(recurrent product) for a cell that takes it apart, (T, rows, G·H); empty otherwise.
    pub dg_rec: ArrayViewMut3<'a, T>,
    /// The groups of rows whose sums (γ, β, the input side's) are kept apart: `param_groups`
    /// of the batch for all rows, 1 for a half.
    pub groups: usize,
    /// The input side's gradients, when the loop takes them step by step.
    pub input: StepInputGrad<'a, T>,
    pub norm: StepNorm<'a, T>,
    /// With a normalizer: each step's x̂ (T, rows, G·H), overwritten by the step with ∂L/∂z,
    /// the gradient of the raw product (x̂ is spent once the step has its gradient), and
    /// 1/σ as in the forward.
    pub xz: ArrayViewMut3<'a, T>,
    pub rstd: ArrayView3<'a, T>,
    /// With a normalizer: Σ over the window of dy ⊙ x̂ and of dy (∂L/∂γ, ∂L/∂β), per group of
    /// rows (`param_groups`): (groups, 2·G·H), γ's then β's; empty without.
    pub sums: ArrayViewMut2<'a, T>,
}

/// ∂L/∂h_t from above as the time loop reads it: (T, rows, H), or the last step's (rows, H).
#[derive(Clone, Copy)]
pub(crate) enum StepsGrad<'a, T> {
    EveryStep(ArrayView3<'a, T>),
    LastStep(ArrayView2<'a, T>),
}

impl<'a, T: Real> StepsGrad<'a, T> {
    /// (A reborrow: ndarray's views are invariant in their lifetime.)
    pub(super) fn new(g: &'a super::OutputGrad<'_, T>, steps: usize, batch: usize) -> Self {
        match g {
            super::OutputGrad::EveryStep(v) => {
                let h = v.ncols();
                StepsGrad::EveryStep(v.view().into_shape_with_order((steps, batch, h)).unwrap())
            }
            super::OutputGrad::LastStep(v) => StepsGrad::LastStep(v.view()),
        }
    }

    fn split(self, m: usize) -> (Self, Self) {
        match self {
            StepsGrad::EveryStep(v) => {
                let (a, b) = v.split_at(Axis(1), m);
                (StepsGrad::EveryStep(a), StepsGrad::EveryStep(b))
            }
            StepsGrad::LastStep(v) => {
                let (a, b) = v.split_at(Axis(0), m);
                (StepsGrad::LastStep(a), StepsGrad::LastStep(b))
            }
        }
    }

    /// Step t of `steps`; `zeros` is a (rows, H) block of zeros for the steps without one.
    fn at<'s>(&'s self, t: usize, steps: usize, zeros: &'s ndarray::Array2<T>) -> ArrayView2<'s, T> {
        match self {
            StepsGrad::EveryStep(v) => v.index_axis(Axis(0), t),
            StepsGrad::LastStep(v) if t + 1 == steps => v.view(),
            StepsGrad::LastStep(_) => zeros.view(),
        }
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            StepsGrad::EveryStep(v) => (v.len_of(Axis(1)), v.len_of(Axis(2))),
            StepsGrad::LastStep(v) => v.dim(),
        }
    }
}

/// Views that can be cut into two disjoint halves of the batch, when their normalizer can.
pub(super) trait SplitBatch: Sized + Send {
    fn split(self, m: usize) -> Result<(Self, Self), Self>;
    /// The halves must run at the same time (they wait for each other at every step).
    fn joined(&self) -> bool;
}

impl<T: Real> SplitBatch for WindowRows<'_, T> {
    fn joined(&self) -> bool {
        self.norm.joined()
    }

    fn split(mut self, m: usize) -> Result<(Self, Self), Self> {
        let rows = self.gates.len_of(Axis(1));
        let (norm0, norm1) = match std::mem::replace(&mut self.norm, StepNorm::None).halves(rows) {
            Ok(h) => h,
            Err(n) => {
                self.norm = n;
                return Err(self);
            }
        };
        let (g0, g1) = self.gates.split_at(Axis(1), m);
        let (i0, i1) = self.input.split(m);
        let (h0, h1) = self.hs.split_at(Axis(1), m);
        let (c0, c1) = self.cs.split_at(Axis(1), m);
        let (a0, a1) = self.aux.split_at(Axis(1), m);
        let (q0, q1) = split_rows2(self.rec, m);
        let (z0, z1) = split_rows2(self.z, m);
        let (x0, x1) = split_rows3(self.xhat, m);
        // batch norm's one 1/σ row per step and its statistics go to the first half
        let (r0, r1) = split_rows3(self.rstd, m);
        let n_stats = self.bn_stats.nrows();
        let (s0, s1) = self.bn_stats.split_at(Axis(0), n_stats);
        let (b, t0) = (self.rec_bias, self.t0);
        Ok((
            WindowRows {
                gates: g0,
                hs: h0,
                cs: c0,
                aux: a0,
                rec: q0,
                rec_bias: b,
                input: i0,
                norm: norm0,
                t0,
                z: z0,
                xhat: x0,
                rstd: r0,
                bn_stats: s0,
            },
            WindowRows {
                gates: g1,
                hs: h1,
                cs: c1,
                aux: a1,
                rec: q1,
                rec_bias: b,
                input: i1,
                norm: norm1,
                t0,
                z: z1,
                xhat: x1,
                rstd: r1,
                bn_stats: s1,
            },
        ))
    }
}

impl<T: Real> SplitBatch for GradWindowRows<'_, T> {
    fn joined(&self) -> bool {
        self.norm.joined() || self.input.joined()
    }

    fn split(mut self, m: usize) -> Result<(Self, Self), Self> {
        let rows = self.gates.len_of(Axis(1));
        let shared_rstd = self.norm.shares_rstd();
        let (norm0, norm1) = match std::mem::replace(&mut self.norm, StepNorm::None).halves(rows) {
            Ok(h) => h,
            Err(n) => {
                self.norm = n;
                return Err(self);
            }
        };
        let (gates, gates1) = self.gates.split_at(Axis(1), m);
        let (hs, hs1) = self.hs.split_at(Axis(1), m);
        let (cs, cs1) = self.cs.split_at(Axis(1), m);
        let (aux, aux1) = self.aux.split_at(Axis(1), m);
        let (d_out, d_out1) = self.d_out.split(m);
        let (dh, dh1) = self.dh.split_at(Axis(0), m);
        let (dc, dc1) = self.dc.split_at(Axis(0), m);
        let (dg_rec, dg_rec1) = split_rows3(self.dg_rec, m);
        let (input, input1) = self.input.split(m);
        let (xz, xz1) = split_rows3(self.xz, m);
        let (rstd, rstd1) = if shared_rstd { (self.rstd, self.rstd) } else { split_view3(self.rstd, m) };
        // a half is one group of rows (`param_groups`)
        let (sums, sums1) = split_rows2(self.sums, 1);
        Ok((
            GradWindowRows { gates, hs, cs, aux, d_out, dh, dc, dg_rec, groups: 1, input, norm: norm0, xz, rstd, sums },
            GradWindowRows {
                gates: gates1,
                hs: hs1,
                cs: cs1,
                aux: aux1,
                d_out: d_out1,
                dh: dh1,
                dc: dc1,
                dg_rec: dg_rec1,
                groups: 1,
                input: input1,
                norm: norm1,
                xz: xz1,
                rstd: rstd1,
                sums: sums1,
            },
        ))
    }
}

/// Halves of a possibly empty (rows, ·) view.
fn split_rows2<T>(v: ArrayViewMut2<'_, T>, m: usize) -> (ArrayViewMut2<'_, T>, ArrayViewMut2<'_, T>) {
    let m = m.min(v.nrows());
    v.split_at(Axis(0), m)
}

/// Halves along the row axis of a possibly empty (T, rows, ·) view.
fn split_rows3<T>(v: ArrayViewMut3<'_, T>, m: usize) -> (ArrayViewMut3<'_, T>, ArrayViewMut3<'_, T>) {
    let m = m.min(v.len_of(Axis(1)));
    v.split_at(Axis(1), m)
}

fn split_view3<T>(v: ArrayView3<'_, T>, m: usize) -> (ArrayView3<'_, T>, ArrayView3<'_, T>) {
    let m = m.min(v.len_of(Axis(1)));
    v.split_at(Axis(1), m)
}

/// Batches at least this large are split in two halves, one per thread.
const SPLIT_MIN_BATCH: usize = 16;

/// The groups of a batch's rows whose ∂L/∂γ, ∂L/∂β sums the backward keeps apart: the two
/// halves `split_batch` would run (rows before `batch / 2`, the rest) whether or not it does,
/// so that one thread and two add the same numbers in the same order.
pub(super) fn param_groups(batch: usize) -> usize {
    if batch >= SPLIT_MIN_BATCH { 2 } else { 1 }
}

/// Whether `split_batch` will run a batch of `batch` rows as two halves (when the normalizer
/// allows it).
pub(super) fn splits(batch: usize) -> bool {
    threads() > 1 && batch >= SPLIT_MIN_BATCH
}

/// Run `f` on two halves of the rows in parallel when there are two threads, enough rows and
/// a normalizer that allows it (each half's GEMMs then run on one thread: `par` = false); on
/// all rows otherwise. Halves that wait for each other at every step (batch norm's
/// statistics) get a thread of their own each, so that neither can be queued behind the other
/// (rayon's `join` may run both on one worker).
pub(super) fn split_batch<R: SplitBatch>(rows: R, batch: usize, f: &(dyn Fn(R, bool) + Sync)) {
    if !splits(batch) {
        return f(rows, true);
    }
    match rows.split(batch / 2) {
        Ok((a, b)) if a.joined() => std::thread::scope(|s| {
            let other = s.spawn(|| {
                crate::tensor::flush_denormals();
                f(b, false)
            });
            f(a, false);
            if let Err(e) = other.join() {
                std::panic::resume_unwind(e);
            }
        }),
        Ok((a, b)) => {
            rayon::join(|| f(a, false), || f(b, false));
        }
        Err(all) => f(all, true),
    }
}

/// The forward time loop over some rows of the batch.
pub(super) fn forward<C: Cell, T: Real>(mut r: WindowRows<T>, wh: WeightsRef<T>, hidden: usize, par: bool) {
    // a second batch-norm half keeps its (identical) copy of each step's 1/σ here
    let mut own_rstd: Vec<T> = Vec::new();
    for t in 0..r.gates.len_of(Axis(0)) {
        let mut gates = r.gates.index_axis_mut(Axis(0), t);
        let (h_prev, mut h_next) = r.hs.view_mut().split_at(Axis(0), t + 1);
        let (c_prev, mut c_next) = r.cs.view_mut().split_at(Axis(0), t + 1);
        let h_prev = h_prev.index_axis(Axis(0), t);
        r.input.write(t, gates.view_mut());
        // G_t += N_h(h_{t-1}·W_hᵀ): without a normalizer the product goes straight into G_t; a
        // cell that takes it apart gets it in R_t (the normalizer adds into a zeroed R_t).
        let mut target = if C::PRODUCT_APART { r.rec.view_mut() } else { gates.view_mut() };
        if C::PRODUCT_APART && !matches!(r.norm, StepNorm::None) {
            target.fill(T::zero());
        }
        match &mut r.norm {
            StepNorm::None => wh.product(target, !C::PRODUCT_APART, h_prev, par),
            StepNorm::Rows(n) => {
                wh.product(r.z.view_mut(), false, h_prev, par);
                let (xhat, rstd) = (r.xhat.index_axis_mut(Axis(0), t), r.rstd.index_axis_mut(Axis(0), t));
                n.forward_rows(r.z.view(), xhat, rstd, target);
            }
            StepNorm::Batch { norm, train, .. } => {
                wh.product(r.z.view_mut(), false, h_prev, par);
                let (xhat, rstd) = (r.xhat.index_axis_mut(Axis(0), t), r.rstd.index_axis_mut(Axis(0), t));
                norm.forward(r.z.view(), r.t0 + t, *train, xhat, rstd, target);
            }
            StepNorm::BatchPart { norm, train, peer, rows_total, work } => {
                wh.product(r.z.view_mut(), false, h_prev, par);
                let g = r.z.ncols();
                let mut rstd = r.rstd.index_axis_mut(Axis(0), t);
                let inv_r: &mut [T] = if rstd.nrows() == 1 {
                    rstd.row_mut(0).into_slice().unwrap()
                } else {
                    own_rstd.resize(g, T::zero());
                    &mut own_rstd
                };
                let stats = (r.bn_stats.nrows() > 0).then(|| r.bn_stats.row_mut(t).into_slice().unwrap());
                let xhat = r.xhat.index_axis_mut(Axis(0), t);
                norm.forward_part(
                    r.z.view(),
                    r.t0 + t,
                    *train,
                    Some(peer),
                    *rows_total,
                    work,
                    xhat,
                    inv_r,
                    stats,
                    target,
                );
            }
        }
        C::forward(
            StepRows {
                gates,
                rec: r.rec.view(),
                rec_bias: r.rec_bias,
                h_prev,
                h: h_next.index_axis_mut(Axis(0), 0),
                c_prev: c_prev.index_axis(Axis(0), t),
                c: c_next.index_axis_mut(Axis(0), 0),
                aux: r.aux.index_axis_mut(Axis(0), t),
            },
            hidden,
        );
    }
}

/// The backward time loop over some rows; returns Σ (∂L/∂h_t)² over those rows for every t.
/// `wh` is the effective W_h, (G·H, H). A recurrent normalizer's ∂L/∂γ, ∂L/∂β are summed step
/// by step into `r.sums` (each step's rows first, then into the window's sum: shorter chains
/// than one sum over all T·B rows).
pub(super) fn backward<C: Cell, T: Real>(
    mut r: GradWindowRows<T>,
    wh: FixedRhs<T>,
    hidden: usize,
    par: bool,
) -> Vec<f64> {
    let steps = r.gates.len_of(Axis(0));
    let rows = r.gates.len_of(Axis(1));
    let mut sq = vec![0.0; steps];
    let zeros = ndarray::Array2::zeros(r.d_out.shape());
    // this part's groups of rows (two when one thread runs both halves) and a step's sums
    let split_at = if r.groups == 2 { rows / 2 } else { rows };
    let mut step_sums = vec![T::zero(); r.sums.len()];
    let g = r.gates.len_of(Axis(2));
    let mut step_input = vec![T::zero(); r.input.step_len(g)];
    let mut step_input_norm = vec![T::zero(); if r.input.nx.is_some() { r.input.sums.nrows() * 2 * g } else { 0 }];
    let mut work = PartWork::default();
    for t in (0..steps).rev() {
        // the step's activations in, ∂L/∂G_t out
        let mut dg = r.gates.index_axis_mut(Axis(0), t);
        let mut dg_rec = r.dg_rec.index_axis_mut(Axis(0), t);
        sq[t] = C::backward(
            StepGradRows {
                gates: dg.view_mut(),
                h_prev: r.hs.index_axis(Axis(0), t),
                c_prev: r.cs.index_axis(Axis(0), t),
                c: r.cs.index_axis(Axis(0), t + 1),
                aux: r.aux.index_axis(Axis(0), t),
                d_out: r.d_out.at(t, steps, &zeros),
                dh: r.dh.view_mut(),
                dc: r.dc.view_mut(),
                dg_rec: dg_rec.view_mut(),
            },
            hidden,
        );
        r.input.add_step(t, dg.view(), split_at, &mut step_input, &mut step_input_norm);
        // ∂L/∂h_{t-1} = ∂L/∂(W_h·h_{t-1}) · W_h, through the normalizer's backward if any; added
        // to the direct part the cell left in dh, for a cell that has one.
        let dy = if C::PRODUCT_APART { dg_rec.view() } else { dg.view() };
        if matches!(r.norm, StepNorm::None) {
            wh.product(r.dh.view_mut(), C::PRODUCT_APART, dy, par);
            continue;
        }
        let (mut dz, rstd) = (r.xz.index_axis_mut(Axis(0), t), r.rstd.index_axis(Axis(0), t));
        step_sums.iter_mut().for_each(|s| *s = T::zero());
        match &mut r.norm {
            StepNorm::None => unreachable!("handled above"),
            StepNorm::Rows(n) => n.input_grad_rows_in_place(dy, dz.view_mut(), rstd, split_at, &mut step_sums),
            StepNorm::Batch { norm, .. } => {
                let inv_r = rstd.row(0).to_slice().unwrap();
                norm.input_grad_part_in_place(
                    dy,
                    dz.view_mut(),
                    inv_r,
                    None,
                    rows,
                    &mut work,
                    split_at,
                    &mut step_sums,
                );
            }
            StepNorm::BatchPart { norm, peer, rows_total, work, .. } => {
                let inv_r = rstd.row(0).to_slice().unwrap();
                let (p, n) = (Some(peer), *rows_total);
                norm.input_grad_part_in_place(dy, dz.view_mut(), inv_r, p, n, work, split_at, &mut step_sums);
            }
        }
        for (acc, &s) in r.sums.iter_mut().zip(&step_sums) {
            *acc += s;
        }
        wh.product(r.dh.view_mut(), C::PRODUCT_APART, dz.view(), par);
    }
    sq
}
