//! N_x, the layer or batch normalizer of a layer's input product W_x·x over a window
//! (docs/SPEC.md §1). Unlike W_h·h_{t-1} every step's product is known before the recurrence, so
//! the steps are independent: with two threads each takes half of them.
//!
//! Backward needs each step's x̂ = (z − μ)/σ. Where the input is wide (token rows, a lower
//! layer's h) the window keeps x̂ for every step, (T·B, G·H), written in place over the raw
//! product. Where it is narrow — sequential MNIST's one pixel — the product costs less than the
//! normalization itself, so nothing window-sized is kept: forward and backward both recompute a
//! step's x̂ from x_t, into (B, G·H) scratch (125 MB less at T = 784, B = 100, H = 100): the
//! same product, then the same normalizer kernels, so the same x̂ and ∂L/∂z. With layer norm
//! (row-local) forward and backward then run inside the time loop, one step at a time
//! (`steps::StepInput`, `steps::StepNx`), so that G_t and ∂L/∂G_t are in cache; the backward's
//! sums (∂L/∂W_x, γ, β) are then taken step by step, per group of the batch's rows. This file's
//! window pass (kept x̂_x: wide inputs, inputs that need ∂L/∂x, token ids from a vocabulary
//! large beside the window) takes γ, β's per half of the steps.
//!
//! Where the input is token ids and the normalizer is layer norm (row-local), a row's x̂ is a
//! function of its token alone: the window keeps x̂ of each vocabulary row of W_x (a table,
//! vocab × G·H: PTB-char's 50 rows instead of 6,400), the time loop adds each row's γ ⊙ x̂ + β
//! from it, and backward gathers a step's x̂ from it — again the same kernels on the same x̂.
//!
//! A one-wide input of few distinct values — sequential MNIST's pixels, 256 levels — is
//! tabled the same way: x̂ of each distinct value's product, gathered by each row's level
//! (`XhatX::Levels`), instead of the product and the normalizer run again on every step's
//! rows in forward and again in backward.
//!
//! Batch norm's x̂ at step t needs the batch's μ_t and σ_t, and the time loop splits the batch
//! between two threads. Where the product is cheap to form twice (token ids' rows of W_x, a
//! narrow input) the statistics are taken here, in a pass over the steps that writes only μ_t
//! and 1/σ_t (T × G·H each); the time loop then forms the product again and normalizes each
//! row with them (`steps::StepInput::BatchNormed`), and backward forms it a third time for x̂
//! — nothing window-sized kept for N_x. Its backward runs in the time loop too, with ∂L/∂G_t
//! in cache: ∂L/∂z_x needs column means of the whole batch's γ ⊙ ∂L/∂G_t and γ ⊙ ∂L/∂G_t ⊙ x̂,
//! which two halves of the batch join at every step (`steps::StepNxBatch`), as N_h's backward
//! joins its own. (Before, a window pass here recomputed every step's x̂ and wrote ∂L/∂z_x for
//! the window, and ∂L/∂W_x and ∂L/∂b were window products over it; without that pass
//! sequential MNIST's batch-norm steps run 1.05× faster at one thread on AMD Zen 4.)

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, s};

use super::steps;
use super::{Cache, LayerInput};
use crate::nn::norm::{Normalizer, PartWork};
use crate::nn::packed::WeightsRef;
use crate::tensor::{Real, ensure_shape};

/// Inputs at most this wide have their x̂ recomputed in backward instead of kept for the window:
/// the product's cost per element (≤ 8 multiply-adds) is below the normalization's own.
pub(super) const RECOMPUTE_MAX_INPUT: usize = 8;

/// Where backward finds each step's x̂_x.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum XhatX {
    /// The window holds x̂_x for every step.
    #[default]
    Kept,
    /// Recomputed (nothing window-sized kept): from a narrow dense input's product, or, under
    /// batch norm, from token ids' rows of W_x and the step's μ and 1/σ.
    Recomputed,
    /// Gathered by token from x̂ of W_x's rows (one-hot input, layer norm).
    Table,
    /// Gathered by level from x̂ of the products of a one-wide input's distinct values (layer
    /// norm; at most `LEVELS_MAX` of them, and few beside the window's rows).
    Levels,
}

/// A one-wide input is tabled by its values where it has at most this many distinct ones
/// (MNIST's pixels have 256).
pub(super) const LEVELS_MAX: usize = 256;

/// A vocabulary's table pays where it has at most this share of the window's rows.
pub(super) const TABLE_MAX_SHARE: usize = 4;

impl XhatX {
    fn of<T: Real>(input: &LayerInput<T>, nx: &Normalizer<T>, frozen: bool, vocab: usize) -> XhatX {
        match input {
            LayerInput::Dense(x) if x.ncols() <= RECOMPUTE_MAX_INPUT => XhatX::Recomputed,
            LayerInput::OneHot(ids) if nx.row_local() && !frozen && vocab * TABLE_MAX_SHARE <= ids.len() => {
                XhatX::Table
            }
            // a row's x̂ is (W_x[id] − μ_t)/σ_t: a gather, as the kept window's own
            LayerInput::OneHot(_) if !nx.row_local() && !frozen => XhatX::Recomputed,
            _ => XhatX::Kept,
        }
    }
}

/// Forward of N_x: G = b + N_x(X·W_xᵀ) into `cache.gates` for the whole window, or, where x̂_x
/// is tabled or recomputed, only what the time loop needs to do it step by step
/// (`steps::StepInput`: the table, the scratch, and batch norm's per-step μ and 1/σ, which
/// need the whole batch of a step and so are taken here, before the loop splits the batch);
/// returns whether it left G to the time loop. `cache.steps`, `cache.batch` are set. The
/// product uses the window's effective W_x, or `frozen` (an exported layer's). Training batch
/// norm updates the running statistics after the window, step by step in time order.
pub(super) fn forward<T: Real>(
    nx: &mut Normalizer<T>,
    frozen: Option<WeightsRef<T>>,
    input: LayerInput<T>,
    bias: ArrayView1<T>,
    cache: &mut Cache<T>,
    train: bool,
    t0: usize,
) -> bool {
    let (steps, batch, g) = (cache.steps, cache.batch, nx.blocks * nx.hidden);
    let (rows, rr) = (steps * batch, nx.rstd_rows_per_step(batch));
    let mut source = XhatX::of(&input, nx, frozen.is_some(), cache.wx_t.nrows());
    if source == XhatX::Recomputed
        && nx.row_local()
        && frozen.is_none()
        && let LayerInput::Dense(x) = input
        && x.ncols() == 1
        && find_levels(x, LEVELS_MAX.min(rows / TABLE_MAX_SHARE), &mut cache.levels, &mut cache.level_ids)
    {
        source = XhatX::Levels;
    }
    cache.xhat_x_source = source;
    cache.train = train;
    cache.t0 = t0;
    if source == XhatX::Table {
        table(nx, rows, cache);
        return true;
    }
    if source == XhatX::Levels {
        level_table(nx, rows, cache);
        return true;
    }
    let keep = source == XhatX::Kept;
    // the time loop normalizes each step's rows; batch norm's statistics are taken below
    let in_loop = !keep;
    let Cache { z, xhat_x, rstd_x, gates, bn_stats_x, wx_t, .. } = cache;
    // two steps' rows of scratch: one per half (or the time loop's product and x̂)
    ensure_shape(z, 2 * batch, g);
    ensure_shape(xhat_x, if keep { rows } else { 2 * batch }, g);
    ensure_shape(rstd_x, steps * rr, nx.rstd_cols());
    if in_loop && nx.row_local() {
        return true;
    }
    // each step's μ, σ²: for the running statistics in training, and for the time loop (μ,
    // the batch's or the running one) in training and evaluation
    let stats = train && !nx.row_local();
    let keep_stats = stats || in_loop;
    ensure_shape(bn_stats_x, if keep_stats { steps } else { 0 }, 2 * g);
    if !in_loop {
        gates.assign(&bias.broadcast((rows, g)).unwrap());
    }
    let wx_t = wx_t.view();
    // out = X·W_xᵀ, or the rows of W_x of the ids (ndarray views are invariant in their
    // lifetime: no one WeightsRef for both)
    let product = |out: ArrayViewMut2<T>, x: ArrayView2<T>, par: bool| match &frozen {
        Some(w) => w.product(out, false, x, par),
        None => WeightsRef::dense(wx_t.view()).product(out, false, x, par),
    };
    let gather = |out: ArrayViewMut2<T>, ids: &[u32]| match &frozen {
        Some(w) => w.gather(out, ids),
        None => WeightsRef::dense(wx_t.view()).gather(out, ids),
    };
    if keep {
        // the raw product for the whole window, which the normalizer overwrites step by step
        match input {
            LayerInput::OneHot(ids) => gather(xhat_x.view_mut(), ids),
            LayerInput::Dense(x) => product(xhat_x.view_mut(), x, true),
        }
    }
    let norm = &*nx;
    // steps [first, first + n) of the window, on one thread: a step's raw product into z (copied
    // from the kept x̂_x, or computed from x_t), then normalized into x̂ with γ⊙x̂ + β added into
    // G_t — or, for the time loop, only the step's batch statistics
    let run = |first: usize,
               mut z: ArrayViewMut2<T>,
               mut xhat: ArrayViewMut2<T>,
               mut rstd: ArrayViewMut2<T>,
               mut out: ArrayViewMut2<T>,
               mut st: ArrayViewMut2<T>| {
        let mut work = PartWork::default();
        for k in 0..rstd.nrows() / rr {
            let (t, r) = (first + k, k * batch..(k + 1) * batch);
            match input {
                _ if keep => z.assign(&xhat.slice(s![r.clone(), ..])),
                LayerInput::OneHot(ids) => gather(z.view_mut(), &ids[t * batch..(t + 1) * batch]),
                LayerInput::Dense(x) => product(z.view_mut(), x.slice(s![t * batch..(t + 1) * batch, ..]), false),
            }
            if norm.row_local() {
                let (xhat, out) = (xhat.slice_mut(s![r.clone(), ..]), out.slice_mut(s![r, ..]));
                norm.forward_rows(z.view(), xhat, rstd.slice_mut(s![norm.rstd_rows(k, batch), ..]), out);
                continue;
            }
            let stats = (st.nrows() > 0).then(|| st.row_mut(k).into_slice().unwrap());
            let inv_r = rstd.row_mut(k).into_slice().unwrap();
            if in_loop {
                let st = stats.expect("the time loop keeps every step's statistics");
                norm.batch_stats(z.view(), t0 + t, train, None, batch, &mut work, inv_r, Some(&mut *st));
                if !train {
                    // evaluation's μ is the running one, which batch_stats does not record
                    st[..g].copy_from_slice(work.mean());
                }
            } else {
                let (xhat, out) = (xhat.slice_mut(s![r.clone(), ..]), out.slice_mut(s![r, ..]));
                norm.forward_part(z.view(), t0 + t, train, None, batch, &mut work, xhat, inv_r, stats, out);
            }
        }
    };
    if steps::splits(batch) && steps >= 2 {
        let half = steps / 2;
        let (z0, z1) = z.view_mut().split_at(Axis(0), batch);
        let (x0, x1) = xhat_x.view_mut().split_at(Axis(0), if keep { half * batch } else { 0 });
        let (r0, r1) = rstd_x.view_mut().split_at(Axis(0), half * rr);
        let (g0, g1) = gates.view_mut().split_at(Axis(0), if in_loop { 0 } else { half * batch });
        let (s0, s1) = bn_stats_x.view_mut().split_at(Axis(0), if keep_stats { half } else { 0 });
        rayon::join(|| run(0, z0, x0, r0, g0, s0), || run(half, z1, x1, r1, g1, s1));
    } else {
        let gates = if in_loop { gates.slice_mut(s![..0, ..]) } else { gates.view_mut() };
        let z = z.slice_mut(s![..batch, ..]);
        run(0, z, xhat_x.view_mut(), rstd_x.view_mut(), gates, bn_stats_x.view_mut());
    }
    if stats {
        nx.apply_running(cache.bn_stats_x.view(), t0, batch);
    }
    in_loop
}

/// Whether the backward's time loop can run N_x step by step (`steps::StepNx`), as the forward's
/// does wherever x̂_x is not kept (`forward`): x̂_x tabled or recomputed, so nothing window-wide
/// stands between steps. Batch norm's ∂L/∂z_x needs column means of the whole batch's
/// ∂L/∂G_t: where two threads each run half of the batch, the halves join them at every step,
/// as N_h's backward does. (`layer.rs`'s backward also asks that no ∂L/∂x be needed, which only
/// the window's pass gives, and that token ids come from a vocabulary small beside the window.)
pub(super) fn backward_in_time_loop(source: XhatX) -> bool {
    source != XhatX::Kept
}

/// Layer-norm N_x's table for token ids: x̂ and 1/σ of every row of W_x (`layer_forward` on the
/// rows the window would have gathered) and γ ⊙ x̂ + β of each, which the time loop adds to
/// each row's G_t by its token (`steps::StepInput::Table`, in the order `layer_forward`
/// adds them), copying the row's 1/σ into `rstd_x` for backward.
fn table<T: Real>(nx: &Normalizer<T>, rows: usize, cache: &mut Cache<T>) {
    let Cache { xhat_x, rstd_x, wx_t, table_x, rstd_table_x, .. } = cache;
    fill_table(nx, wx_t.view(), rows, xhat_x, rstd_x, table_x, rstd_table_x);
}

/// Layer-norm N_x's table for a one-wide input of few distinct values (`XhatX::Levels`, found
/// by `find_levels`): each value's product W_x·v as the time loop would form it (the same
/// product call on rows holding the value), then the table of those rows as `table` makes it;
/// the time loop gathers it by each row's level (`cache.level_ids`).
fn level_table<T: Real>(nx: &Normalizer<T>, rows: usize, cache: &mut Cache<T>) {
    let Cache { xhat_x, rstd_x, wx_t, table_x, rstd_table_x, levels, level_z, .. } = cache;
    let g = wx_t.ncols();
    ensure_shape(level_z, levels.len(), g);
    let values = ArrayView2::from_shape((levels.len(), 1), &levels[..]).expect("one value per level");
    WeightsRef::dense(wx_t.view()).product(level_z.view_mut(), false, values, false);
    fill_table(nx, level_z.view(), rows, xhat_x, rstd_x, table_x, rstd_table_x);
}

/// x̂, 1/σ and γ ⊙ x̂ + β of every row of the products `z` into the table (`xhat`, `rstd_tab`,
/// `y_tab`), and `rstd_x` sized for the window's `rows`.
fn fill_table<T: Real>(
    nx: &Normalizer<T>,
    z: ArrayView2<T>,
    rows: usize,
    xhat_x: &mut Array2<T>,
    rstd_x: &mut Array2<T>,
    y_tab: &mut Array2<T>,
    rstd_tab: &mut Array2<T>,
) {
    let (n, g) = z.dim();
    ensure_shape(xhat_x, n, g);
    ensure_shape(rstd_x, rows, nx.rstd_cols());
    ensure_shape(y_tab, n, g);
    ensure_shape(rstd_tab, n, nx.rstd_cols());
    // (forward_rows adds its output into y_tab; overwritten below, element by element as
    // `layer_forward` computes γ ⊙ x̂ + β, not as 0 + that)
    nx.forward_rows(z, xhat_x.view_mut(), rstd_tab.view_mut(), y_tab.view_mut());
    let (gain, bias) = (nx.gain.value.as_slice().unwrap(), nx.bias.value.as_slice().unwrap());
    for (mut y, x) in y_tab.outer_iter_mut().zip(xhat_x.outer_iter()) {
        for (((y, &x), &gs), &bs) in y.iter_mut().zip(x.iter()).zip(gain).zip(bias) {
            *y = gs * x + bs;
        }
    }
}

/// The distinct values of a one-wide input `x` (T·B, 1) in first-seen order into `values`
/// (told apart by their bits, so −0 and +0 are two: their products' zeros differ in sign), and
/// each row's index among them into `ids`; false where there are more than `max` (≤
/// `LEVELS_MAX`), both then partial.
fn find_levels<T: Real>(x: ArrayView2<T>, max: usize, values: &mut Vec<T>, ids: &mut Vec<u32>) -> bool {
    // open addressing over 4·LEVELS_MAX slots (a power of two), each a level's index
    const SLOTS: usize = 4 * LEVELS_MAX;
    const EMPTY: u32 = u32::MAX;
    debug_assert!(max <= LEVELS_MAX && SLOTS.is_power_of_two());
    let mut slots = [EMPTY; SLOTS];
    values.clear();
    ids.clear();
    for &v in x.iter() {
        let bits = v.f64().to_bits();
        let mut s =
            ((bits ^ (bits >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize;
        let id = loop {
            match slots[s] {
                EMPTY if values.len() == max => return false,
                EMPTY => {
                    slots[s] = values.len() as u32;
                    values.push(v);
                    break slots[s];
                }
                i if values[i as usize].f64().to_bits() == bits => break i,
                _ => s = (s + 1) % SLOTS,
            }
        };
        ids.push(id);
    }
    true
}

/// Backward of N_x over the window, for what the time loop does not take (`backward_in_time_loop`):
/// ∂L/∂(W_x·x) from ∂L/∂(its output) — the gate gradients in `cache.gates`, (T·B, G·H) — left
/// in `cache.xhat_h` (free once dW_h has read it), and γ, β's gradients. Each step's x̂ is
/// overwritten by its ∂L/∂z where the window kept it (the buffers are then swapped), or
/// recomputed straight into the step's rows of ∂L/∂z; the same in-place kernels as the time
/// loop's take γ, β's sums in that one pass, per half of the steps (two threads take a half
/// each; one thread both, in order), the halves added in order, so one and two threads give the
/// same numbers. `scratch` holds what recomputing a step's x̂ needs.
pub(super) fn backward<T: Real>(
    nx: &mut Normalizer<T>,
    input: LayerInput<T>,
    cache: &mut Cache<T>,
    scratch: &mut Array2<T>,
) {
    let (steps, batch, g) = (cache.steps, cache.batch, nx.blocks * nx.hidden);
    let keep = cache.xhat_x_source == XhatX::Kept;
    let rr = nx.rstd_rows_per_step(batch);
    // per half: z, a discarded output (B, G·H) each, and one step's 1/σ
    let scratch_rows = 2 * batch + rr;
    ensure_shape(scratch, if keep { 0 } else { 2 * scratch_rows }, g);
    // γ's then β's sums, one row per half of the steps
    let mut sums = Array2::<T>::zeros((2, 2 * g));
    let mut dz = std::mem::take(&mut cache.xhat_h);
    if keep {
        std::mem::swap(&mut dz, &mut cache.xhat_x);
    }
    ensure_shape(&mut dz, steps * batch, g);
    let recompute = Recompute::new(cache, input);
    let (dy, rstd) = (cache.gates.view(), cache.rstd_x.view());
    let norm = &*nx;
    // steps [first, first + n) of the window: x̂ of each (kept, or recomputed into its rows of
    // ∂L/∂z), then ∂L/∂z over it, with the step's γ, β sums added to this half's
    let run = |first: usize, mut xz: ArrayViewMut2<T>, mut scratch: ArrayViewMut2<T>, sums: &mut [T]| {
        let mut work = PartWork::default();
        for k in 0..xz.nrows() / batch {
            let t = first + k;
            let mut xz = xz.slice_mut(s![k * batch..(k + 1) * batch, ..]);
            if !keep {
                recompute.step(norm, t, xz.view_mut(), scratch.view_mut());
            }
            let dy = dy.slice(s![t * batch..(t + 1) * batch, ..]);
            let rstd = rstd.slice(s![norm.rstd_rows(t, batch), ..]);
            if norm.row_local() {
                norm.input_grad_rows_in_place(dy, xz, rstd, batch, sums);
            } else {
                let inv_r = rstd.row(0).to_slice().unwrap();
                norm.input_grad_part_in_place(dy, xz, inv_r, None, batch, &mut work, batch, sums);
            }
        }
    };
    let half = steps / 2;
    let (xz0, xz1) = dz.view_mut().split_at(Axis(0), half * batch);
    let (w0, w1) = scratch.view_mut().split_at(Axis(0), if keep { 0 } else { scratch_rows });
    let (s0, s1) = sums.view_mut().split_at(Axis(0), 1);
    let (s0, s1) = (s0.into_slice().unwrap(), s1.into_slice().unwrap());
    if steps::splits(batch) {
        rayon::join(|| run(0, xz0, w0, s0), || run(half, xz1, w1, s1));
    } else {
        run(0, xz0, w0, s0);
        run(half, xz1, w1, s1);
    }
    nx.add_param_sums(sums.view());
    cache.xhat_h = dz;
}

/// Recomputes step t's x̂ from the input, as the forward computed it (or gathers it from the
/// table of W_x's rows, `XhatX::Table`).
struct Recompute<'c, 'x, T> {
    wx: ArrayView2<'c, T>,
    input: LayerInput<'x, T>,
    table: Option<ArrayView2<'c, T>>,
    /// Batch norm's μ and 1/σ of every step (the forward's).
    mean: ArrayView2<'c, T>,
    rstd: ArrayView2<'c, T>,
    batch: usize,
}

impl<'c, 'x, T: Real> Recompute<'c, 'x, T> {
    fn new(cache: &'c Cache<T>, input: LayerInput<'x, T>) -> Self {
        Recompute {
            wx: cache.wx_t.view(),
            input,
            table: (cache.xhat_x_source == XhatX::Table).then(|| cache.xhat_x.view()),
            mean: cache.mean_x(),
            rstd: cache.rstd_x.view(),
            batch: cache.batch,
        }
    }

    /// x̂ of step t into `xhat` (B, G·H), with `scratch` for the rest (rows: z, a discarded
    /// output, 1/σ).
    fn step(&self, norm: &Normalizer<T>, t: usize, mut xhat: ArrayViewMut2<T>, scratch: ArrayViewMut2<T>) {
        let (b, rows) = (self.batch, t * self.batch..(t + 1) * self.batch);
        if let (Some(table), LayerInput::OneHot(ids)) = (self.table, self.input) {
            for (mut row, &id) in xhat.outer_iter_mut().zip(&ids[rows]) {
                row.assign(&table.row(id as usize));
            }
            return;
        }
        let (mut z, rest) = scratch.split_at(Axis(0), b);
        // the raw product as the forward formed it
        match self.input {
            LayerInput::OneHot(ids) => WeightsRef::dense(self.wx).gather(z.view_mut(), &ids[rows]),
            LayerInput::Dense(x) => {
                WeightsRef::dense(self.wx).product(z.view_mut(), false, x.slice(s![rows, ..]), false)
            }
        }
        if norm.row_local() {
            let (out, rstd) = rest.split_at(Axis(0), b);
            layer_xhat(norm, z.view(), xhat, out, rstd);
        } else {
            let (mean, inv_r) = (self.mean.row(t), self.rstd.row(t));
            norm.batch_xhat(z.view(), mean.to_slice().unwrap(), inv_r.to_slice().unwrap(), xhat);
        }
    }
}

/// Layer norm's x̂ of a step's input product `z` (B, G·H), recomputed as the forward formed
/// it: `out` (B, G·H) takes the discarded affine output, `rstd` (B, ≥ rstd_cols) 1/σ.
pub(super) fn layer_xhat<T: Real>(
    norm: &Normalizer<T>,
    z: ArrayView2<T>,
    xhat: ArrayViewMut2<T>,
    mut out: ArrayViewMut2<T>,
    mut rstd: ArrayViewMut2<T>,
) {
    out.fill(T::zero());
    let cols = norm.rstd_cols();
    norm.forward_rows(z, xhat, rstd.slice_mut(s![.., ..cols]), out);
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::super::{Cache, CellKind, Grads, Layer, LayerInput, OutputGrad};
    use crate::nn::norm::Normalization;
    use crate::nn::quant::Quantizer;

    /// Equal to rounding (f64): the same terms summed in another order.
    fn close(a: &Array2<f64>, b: &Array2<f64>) -> bool {
        a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * x.abs().max(y.abs()) + 1e-14)
    }

    /// A window of a layer under `norm` whose dense input is `width` wide: the rows of x̂_x the
    /// cache holds, and the layer's output and weight gradients (for comparing two widths'
    /// paths on the same numbers).
    fn window(width: usize, norm: Normalization) -> (usize, Array2<f64>, Array2<f64>) {
        let (steps, batch, hidden) = (5, 3, 4);
        let mut layer = Layer::<f64>::new("l", CellKind::Lstm, width, hidden, Quantizer::Fp, norm, steps);
        let wave = |i: usize| ((i * 7919) % 23) as f64 / 23.0 - 0.5;
        layer.w_x.value.indexed_iter_mut().for_each(|((r, c), w)| *w = wave(r * 13 + c));
        layer.w_h.value.iter_mut().enumerate().for_each(|(i, w)| *w = wave(i + 101));
        // the same numbers through both paths: only the first input column is non-zero
        let x = Array2::from_shape_fn((steps * batch, width), |(n, j)| if j == 0 { wave(n + 7) } else { 0.0 });
        let (h0, c0) = (Array2::zeros((batch, hidden)), Array2::zeros((batch, hidden)));
        let (mut cache, mut grads) = (Cache::default(), Grads::default());
        layer.prepare_weights(&mut cache);
        layer.forward(&mut cache, LayerInput::Dense(x.view()), h0.view(), c0.view(), true, 0);
        let d_out = Array2::from_shape_fn((steps * batch, hidden), |(n, j)| wave(n * hidden + j + 3));
        layer.backward(&mut cache, &mut grads, LayerInput::Dense(x.view()), OutputGrad::EveryStep(d_out.view()), None);
        let gain = layer.norm_x.as_ref().unwrap().gain.grad.clone();
        (cache.xhat_x.nrows(), cache.output().to_owned(), gain)
    }

    /// A training window of a layer-norm layer with `width` inputs (W_x, W_h set from a fixed
    /// wave) on `input`: x̂_x's rows kept, the output, and the gradients of W_x's first `used`
    /// columns, W_h, γ_x and β_x.
    fn layer_norm_window<'a>(
        cell: CellKind,
        width: usize,
        (steps, batch, hidden): (usize, usize, usize),
        input: impl Fn() -> LayerInput<'a, f64>,
        used: usize,
    ) -> (usize, Array2<f64>, Vec<Array2<f64>>) {
        let mut layer = Layer::<f64>::new("l", cell, width, hidden, Quantizer::Fp, Normalization::Layer, steps);
        let wave = |i: usize| ((i * 7919) % 23) as f64 / 23.0 - 0.5;
        // W_x (G·H, width): its first columns the same whatever the width
        layer.w_x.value.indexed_iter_mut().for_each(|((r, c), w)| *w = wave(r * 13 + c));
        layer.w_h.value.iter_mut().enumerate().for_each(|(i, w)| *w = wave(i + 101));
        let (h0, c0) = (Array2::zeros((batch, hidden)), Array2::zeros((batch, hidden)));
        let (mut cache, mut grads) = (Cache::default(), Grads::default());
        layer.prepare_weights(&mut cache);
        layer.forward(&mut cache, input(), h0.view(), c0.view(), true, 0);
        let d_out = Array2::from_shape_fn((steps * batch, hidden), |(n, j)| wave(n * hidden + j + 3));
        layer.backward(&mut cache, &mut grads, input(), OutputGrad::EveryStep(d_out.view()), None);
        let nx = layer.norm_x.as_ref().unwrap();
        let grads = vec![
            layer.w_x.grad.slice(ndarray::s![.., ..used]).to_owned(),
            layer.w_h.grad.clone(),
            nx.gain.grad.clone(),
            nx.bias.grad.clone(),
        ];
        (cache.xhat_x.nrows(), cache.output().to_owned(), grads)
    }

    /// A window of token ids under layer norm, W_x with `vocab` rows of which the ids use the
    /// first three: x̂_x's rows kept, and the output and every gradient.
    fn one_hot_window(vocab: usize, cell: CellKind) -> (usize, Array2<f64>, Vec<Array2<f64>>) {
        let (steps, batch) = (6, 3);
        let ids: Vec<u32> = (0..steps * batch).map(|n| ((n * 5) % 3) as u32).collect();
        layer_norm_window(cell, vocab, (steps, batch, 4), || LayerInput::OneHot(&ids), 3)
    }

    #[test]
    fn token_ids_under_layer_norm_use_a_table_and_give_the_same_numbers() {
        for cell in [CellKind::Lstm, CellKind::Gru] {
            let (table_rows, table_out, table_grads) = one_hot_window(3, cell);
            let (kept_rows, kept_out, kept_grads) = one_hot_window(40, cell);
            assert_eq!(table_rows, 3, "{cell:?}: three tokens, 18 rows: a table of three rows");
            assert_eq!(kept_rows, 18, "{cell:?}: 40 tokens for 18 rows: every row kept");
            assert_eq!(table_out, kept_out, "{cell:?}: forward");
            // the table's backward runs in the time loop (`steps::StepNx`), summing ∂L/∂W_x, γ
            // and β step by step: the kept window's sums in another order
            for (t, k) in table_grads.iter().zip(&kept_grads) {
                assert!(close(t, k), "{cell:?}: ∂L/∂W_x (used columns), ∂L/∂W_h, N_x's γ and β: {t} vs {k}");
            }
        }
    }

    #[test]
    fn narrow_inputs_keep_no_window_of_xhat_and_give_the_same_numbers() {
        for norm in [Normalization::Layer, Normalization::BatchShared, Normalization::BatchSeparate] {
            let (narrow_rows, narrow_out, narrow_dgain) = window(1, norm);
            let (wide_rows, wide_out, wide_dgain) = window(super::RECOMPUTE_MAX_INPUT + 1, norm);
            assert_eq!(narrow_rows, 2 * 3, "{norm:?}: a narrow input keeps two steps of scratch");
            assert_eq!(wide_rows, 5 * 3, "{norm:?}: a wide input keeps every step's x̂");
            // zero columns add exact zeros to each product: both paths see the same z
            assert_eq!(narrow_out, wide_out, "{norm:?}: forward");
            // recomputed, N_x's backward runs in the time loop (`steps::StepNx`) and sums γ's
            // gradient step by step: another order
            assert!(close(&narrow_dgain, &wide_dgain), "{norm:?}: N_x's γ gradient");
        }
    }

    /// A window of a one-wide input of three values under layer norm (`XhatX::Levels`), or the
    /// same column beside a zero one (two wide: recomputed, as without the levels): x̂_x's rows,
    /// the output and every gradient.
    fn levels_window(width: usize, cell: CellKind) -> (usize, Array2<f64>, Vec<Array2<f64>>) {
        let (steps, batch) = (5, 4);
        let values = [-0.5, 0.25, 0.75];
        let x = Array2::from_shape_fn(
            (steps * batch, width),
            |(n, j)| if j == 0 { values[(n * 5 + n / 4) % 3] } else { 0.0 },
        );
        layer_norm_window(cell, width, (steps, batch, 3), || LayerInput::Dense(x.view()), 1)
    }

    #[test]
    fn a_narrow_input_of_few_values_uses_a_table_and_gives_the_same_numbers() {
        for cell in [CellKind::Lstm, CellKind::Gru] {
            let (level_rows, level_out, level_grads) = levels_window(1, cell);
            let (wide_rows, wide_out, wide_grads) = levels_window(2, cell);
            assert_eq!(level_rows, 3, "{cell:?}: three values, 20 rows: a table of three rows");
            assert_eq!(wide_rows, 2 * 4, "{cell:?}: two wide: two steps of scratch, recomputed");
            // the same products (a zero column adds exact zeros), the same normalizer kernels,
            // and the backward in the time loop in the same order: the same bits
            assert_eq!(level_out, wide_out, "{cell:?}: forward");
            assert_eq!(level_grads, wide_grads, "{cell:?}: ∂L/∂W_x (first column), ∂L/∂W_h, N_x's γ and β");
        }
    }

    #[test]
    fn levels_are_told_apart_by_their_bits_and_capped() {
        let x = Array2::from_shape_vec((6, 1), vec![0.5f32, -0.0, 0.0, 0.5, 1.0, -0.0]).unwrap();
        let (mut values, mut ids) = (Vec::new(), Vec::new());
        assert!(super::find_levels(x.view(), 4, &mut values, &mut ids));
        assert_eq!(values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), [0.5f32, -0.0, 0.0, 1.0].map(f32::to_bits));
        assert_eq!(ids, [0, 1, 2, 0, 3, 1]);
        assert!(!super::find_levels(x.view(), 3, &mut values, &mut ids), "four values, at most three");
    }

    /// A window of token ids under batch norm, given as ids or as the same one-hot rows dense
    /// (12 wide, so kept whole), `batch` rows a step: x̂_x's rows kept, the output in training
    /// and in evaluation (running statistics), the gradients of W_h, γ_x, β_x and W_x, and
    /// whether the backward's time loop took the input side's gradients (`steps::StepInputGrad`).
    fn batch_norm_tokens(
        norm: Normalization,
        as_ids: bool,
        batch: usize,
    ) -> (usize, [Array2<f64>; 2], Vec<Array2<f64>>, bool) {
        let (steps, hidden, vocab) = (5, 3, 12);
        let mut layer = Layer::<f64>::new("l", CellKind::Lstm, vocab, hidden, Quantizer::Fp, norm, steps);
        let wave = |i: usize| ((i * 7919) % 23) as f64 / 23.0 - 0.5;
        layer.w_x.value.indexed_iter_mut().for_each(|((r, c), w)| *w = wave(r * 13 + c));
        layer.w_h.value.iter_mut().enumerate().for_each(|(i, w)| *w = wave(i + 101));
        let ids: Vec<u32> = (0..steps * batch).map(|n| ((n * 5 + n / 3) % vocab) as u32).collect();
        let dense = Array2::from_shape_fn((steps * batch, vocab), |(n, j)| f64::from(ids[n] == j as u32));
        let input = || if as_ids { LayerInput::OneHot(&ids) } else { LayerInput::Dense(dense.view()) };
        let (h0, c0) = (Array2::zeros((batch, hidden)), Array2::zeros((batch, hidden)));
        let (mut cache, mut grads) = (Cache::default(), Grads::default());
        layer.prepare_weights(&mut cache);
        layer.forward(&mut cache, input(), h0.view(), c0.view(), true, 0);
        let (kept, out) = (cache.xhat_x.nrows(), cache.output().to_owned());
        let d_out = Array2::from_shape_fn((steps * batch, hidden), |(n, j)| wave(n * hidden + j + 3));
        layer.backward(&mut cache, &mut grads, input(), OutputGrad::EveryStep(d_out.view()), None);
        let stepwise = grads.input_sums.nrows() > 0;
        let nx = layer.norm_x.as_ref().unwrap();
        let g = vec![layer.w_h.grad.clone(), nx.gain.grad.clone(), nx.bias.grad.clone(), layer.w_x.grad.clone()];
        layer.prepare_weights(&mut cache);
        layer.forward(&mut cache, input(), h0.view(), c0.view(), false, 0);
        (kept, [out, cache.output().to_owned()], g, stepwise)
    }

    #[test]
    fn token_ids_under_batch_norm_keep_no_window_of_xhat_and_give_the_same_numbers() {
        for norm in [Normalization::BatchShared, Normalization::BatchSeparate] {
            // 20 rows of a 12-token vocabulary: ∂L/∂z_x over the window, as for the dense rows;
            // 80 rows (two groups of 8 a step): in the time loop, step by step
            for batch in [4, 16] {
                let (id_rows, id_out, id_grads, id_steps) = batch_norm_tokens(norm, true, batch);
                let (dense_rows, dense_out, dense_grads, dense_steps) = batch_norm_tokens(norm, false, batch);
                let what = format!("{norm:?}, batch {batch}");
                assert_eq!(id_rows, 2 * batch, "{what}: token ids keep two steps of scratch");
                assert_eq!(dense_rows, 5 * batch, "{what}: a 12-wide dense input keeps every step's x̂");
                assert_eq!(id_steps, batch == 16, "{what}: the time loop takes ∂L/∂z_x where the vocabulary is small");
                assert!(!dense_steps, "{what}: a kept x̂_x is the window pass's");
                // a one-hot row's product is its row of W_x exactly: the same z, statistics and x̂
                assert_eq!(id_out, dense_out, "{what}: forward in training and in evaluation");
                // N_x's backward does not reach ∂L/∂G: ∂L/∂W_h is the same either way
                assert_eq!(id_grads[0], dense_grads[0], "{what}: ∂L/∂W_h");
                if id_steps {
                    // summed step by step, per group of rows: another order
                    for (a, b) in id_grads[1..].iter().zip(&dense_grads[1..]) {
                        assert!(close(a, b), "{what}: N_x's γ, β and ∂L/∂W_x: {a} vs {b}");
                    }
                } else {
                    assert_eq!(id_grads[1..3], dense_grads[1..3], "{what}: N_x's γ and β");
                    // ∂L/∂W_x: a row gather-add for ids, a GEMM for the dense rows (another order)
                    assert!(close(&id_grads[3], &dense_grads[3]), "{what}: ∂L/∂W_x");
                }
            }
        }
    }
}
