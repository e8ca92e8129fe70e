//! The five normalizations of docs/SPEC.md §1, and the normalizer of one product (W_x·x or
//! W_h·h) of a recurrent layer: layer norm or batch norm (shared or per-time-step running
//! statistics) of each gate block. Weight norm acts on the weights instead (`weight_norm.rs`);
//! `none` needs no normalizer.
//!
//!   layer:  per sample, over the H features of a gate block: x̂ = (z − μ)/√(σ² + 1e-5)
//!   batch:  per feature, over the batch at one time step:     x̂ = (z − μ)/√(σ² + 1e-5)
//!   out = γ ⊙ x̂ + β
//! with biased σ² in the forward. Batch norm in evaluation uses running statistics
//! (r ← 0.9·r + 0.1·batch, unbiased variance), one slot for all steps (shared) or one per
//! in-window time index (separate; t ≥ T_max uses slot T_max − 1).

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::names::named_enum;
use crate::tensor::{Group, Param, Real};

named_enum! {
    /// How each product of a layer is normalized (docs/SPEC.md §1).
    pub enum Normalization {
        None = "none",
        Weight = "weight",
        Layer = "layer",
        BatchShared = "batch_shared",
        BatchSeparate = "batch_separate",
    }
}

impl Normalization {
    /// Normalizes the products themselves (layer or batch norm), not the weights.
    pub fn normalizes_products(self) -> bool {
        matches!(self, Normalization::Layer | Normalization::BatchShared | Normalization::BatchSeparate)
    }
}

pub const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    Layer,
    Batch { separate: bool },
}

/// The layer or batch normalizer of one product, over its gate blocks of `hidden` features.
///
/// One API for both kinds: `forward` runs a whole step (batch norm needs every row of it, and
/// updates its running statistics); a row-local normalizer (layer norm, see `row_local`) can
/// also run on any subset of a step's rows from several threads at once (`forward_rows`).
/// Backward, with dx̂ = γ ⊙ dy and means over the normalized set (a gate block of a row, or a
/// column of the batch): ∂L/∂z = (1/σ)·(dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂)), ∂L/∂γ = Σ dy ⊙ x̂,
/// ∂L/∂β = Σ dy — written over x̂, with γ, β's sums taken in the same pass, per group of rows
/// (`input_grad_rows_in_place`, `input_grad_part_in_place`), added to the gradients at the end
/// of the window (`add_param_sums`). Both products' backwards use these, in the time loop or
/// over the window (`recurrent::input_norm`).
pub struct Normalizer<T> {
    pub kind: NormKind,
    pub hidden: usize,
    /// Gate blocks of H features each (4 for the LSTM).
    pub blocks: usize,
    /// γ and β, (1, blocks·H).
    pub gain: Param<T>,
    pub bias: Param<T>,
    /// Batch norm running statistics, (slots, blocks·H): 1 slot (shared) or T_max (separate).
    pub running_mean: Array2<T>,
    pub running_var: Array2<T>,
    /// Batch norm's column sums (no allocation per step).
    work: PartWork<T>,
}

impl<T: Real> Normalizer<T> {
    /// The normalizer `normalization` needs on a product of `blocks` gate blocks, if any.
    /// `slots` = T_max for separate batch statistics.
    pub fn for_normalization(
        normalization: Normalization,
        name: &str,
        hidden: usize,
        blocks: usize,
        slots: usize,
    ) -> Option<Self> {
        let kind = match normalization {
            Normalization::Layer => NormKind::Layer,
            Normalization::BatchShared => NormKind::Batch { separate: false },
            Normalization::BatchSeparate => NormKind::Batch { separate: true },
            Normalization::None | Normalization::Weight => return None,
        };
        let g = blocks * hidden;
        let slots = if kind == (NormKind::Batch { separate: true }) { slots.max(1) } else { 1 };
        Some(Normalizer {
            kind,
            hidden,
            blocks,
            gain: Param::new(format!("{name}.gain"), Array2::ones((1, g)), Group::Other),
            bias: Param::new(format!("{name}.bias"), Array2::zeros((1, g)), Group::Other),
            running_mean: Array2::zeros((slots, g)),
            running_var: Array2::ones((slots, g)),
            work: PartWork::default(),
        })
    }

    pub fn slots(&self) -> usize {
        self.running_mean.nrows()
    }

    pub fn params_mut(&mut self) -> [&mut Param<T>; 2] {
        [&mut self.gain, &mut self.bias]
    }

    /// Statistics over each row alone (layer norm): a step's rows can be normalized in parts,
    /// in parallel, by `forward_rows`. Batch norm's statistics couple the rows of a step.
    pub fn row_local(&self) -> bool {
        self.kind == NormKind::Layer
    }

    /// Rows of the 1/σ cache per step of a batch of `batch`: one per row (layer norm: a divisor
    /// per row and gate block) or one (batch norm: a divisor per feature).
    pub fn rstd_rows_per_step(&self, batch: usize) -> usize {
        if self.row_local() { batch } else { 1 }
    }

    /// Columns of the 1/σ cache: one per gate block (layer norm) or per feature (batch norm).
    pub fn rstd_cols(&self) -> usize {
        if self.row_local() { self.blocks } else { self.blocks * self.hidden }
    }

    /// The 1/σ cache rows of in-window step t.
    pub fn rstd_rows(&self, t: usize, batch: usize) -> std::ops::Range<usize> {
        let n = self.rstd_rows_per_step(batch);
        t * n..(t + 1) * n
    }

    crate::tensor::simd_method! {
        /// Normalize the rows `z` of in-window step `t` (B rows for batch norm; any rows for layer
        /// norm) and add γ ⊙ x̂ + β to `out`. Writes x̂ into `xhat` and the divisors' inverses
        /// 1/√(σ² + ε) into `rstd` ((rows, blocks) for layer norm, (1, blocks·H) for batch norm).
        /// `train` selects batch statistics (and updates the running ones) over running ones.
        /// All views must be in standard (row-major, contiguous-row) layout.
        pub fn forward(
            &mut self,
            z: ArrayView2<T>,
            t: usize,
            train: bool,
            xhat: ArrayViewMut2<T>,
            rstd: ArrayViewMut2<T>,
            out: ArrayViewMut2<T>,
        ) => forward_impl, forward_avx512, forward_avx2
    }

    #[inline(always)]
    fn forward_impl(
        &mut self,
        z: ArrayView2<T>,
        t: usize,
        train: bool,
        mut xhat: ArrayViewMut2<T>,
        mut rstd: ArrayViewMut2<T>,
        out: ArrayViewMut2<T>,
    ) {
        let rows = z.nrows();
        match self.kind {
            NormKind::Layer => {
                let (gain, bias) = (self.gain.value.as_slice().unwrap(), self.bias.value.as_slice().unwrap());
                layer_forward(z, self.hidden, T::r(EPS), gain, bias, xhat.view_mut(), rstd.view_mut(), out)
            }
            NormKind::Batch { .. } => {
                // the whole step as one part (no other half to join), then its running update
                let mut work = std::mem::take(&mut self.work);
                let inv_r = rstd.row_mut(0).into_slice().unwrap();
                self.forward_part(z, t, train, None, rows, &mut work, xhat, inv_r, None, out);
                if train {
                    self.update_running(t, &work.mean, &work.total, rows);
                }
                self.work = work;
            }
        }
    }

    crate::tensor::simd_method! {
        /// Layer norm of some rows, for callers that split a step's rows across threads: as
        /// `forward`, but without touching `self` (layer norm keeps no statistics).
        pub fn forward_rows(
            &self,
            z: ArrayView2<T>,
            xhat: ArrayViewMut2<T>,
            rstd: ArrayViewMut2<T>,
            out: ArrayViewMut2<T>,
        ) => forward_rows_impl, forward_rows_avx512, forward_rows_avx2
    }

    #[inline(always)]
    fn forward_rows_impl(
        &self,
        z: ArrayView2<T>,
        mut xhat: ArrayViewMut2<T>,
        rstd: ArrayViewMut2<T>,
        out: ArrayViewMut2<T>,
    ) {
        debug_assert_eq!(self.kind, NormKind::Layer);
        let (gain, bias) = (self.gain.value.as_slice().unwrap(), self.bias.value.as_slice().unwrap());
        layer_forward(z, self.hidden, T::r(EPS), gain, bias, xhat.view_mut(), rstd, out);
    }

    crate::tensor::simd_method! {
        /// ∂L/∂z of layer norm for some rows, without touching `self` (see `forward_rows`), in
        /// place: `xz` holds x̂ on entry and ∂L/∂z on exit, and each row's dy ⊙ x̂ and dy are
        /// added to its group's sums in `sums` (rows before `split_at` to the first 2·G·H
        /// entries, γ's then β's; the rest to the next 2·G·H): the step's part of ∂L/∂γ and
        /// ∂L/∂β, read from the same pass.
        pub fn input_grad_rows_in_place(
            &self,
            dy: ArrayView2<T>,
            xz: ArrayViewMut2<T>,
            rstd: ArrayView2<T>,
            split_at: usize,
            sums: &mut [T],
        ) => input_grad_rows_in_place_impl, input_grad_rows_in_place_avx512, input_grad_rows_in_place_avx2
    }

    #[inline(always)]
    fn input_grad_rows_in_place_impl(
        &self,
        dy: ArrayView2<T>,
        mut xz: ArrayViewMut2<T>,
        rstd: ArrayView2<T>,
        split_at: usize,
        sums: &mut [T],
    ) {
        let (gain, h) = (self.gain.value.as_slice().unwrap(), self.hidden);
        let (hn, g) = (T::r(h as f64), dy.ncols());
        let blocks = g / h;
        assert!(blocks <= MAX_BLOCKS, "at most {MAX_BLOCKS} gate blocks");
        let mut means = [(T::zero(), T::zero()); MEAN_ROWS * MAX_BLOCKS];
        for r0 in (0..dy.nrows()).step_by(MEAN_ROWS) {
            let rows = MEAN_ROWS.min(dy.nrows() - r0);
            // the means of up to MEAN_ROWS rows first, their chains side by side (each in its
            // own column order: the same sums as one row at a time, without waiting on one
            // add's latency per term)
            for k in 0..blocks {
                let blk = k * h..(k + 1) * h;
                let dr = |i: usize| &dy.row(r0 + i).to_slice().unwrap()[blk.clone()];
                let xr = |i: usize| &xz.row(r0 + i).to_slice().unwrap()[blk.clone()];
                if rows == MEAN_ROWS {
                    let m = block_means::<T, MEAN_ROWS>(
                        &gain[blk.clone()],
                        std::array::from_fn(dr),
                        std::array::from_fn(xr),
                        hn,
                    );
                    for (i, m) in m.into_iter().enumerate() {
                        means[i * blocks + k] = m;
                    }
                } else {
                    for i in 0..rows {
                        [means[i * blocks + k]] = block_means(&gain[blk.clone()], [dr(i)], [xr(i)], hn);
                    }
                }
            }
            if rows == MEAN_ROWS && (r0 + rows <= split_at || r0 >= split_at) {
                // four rows of one group: column by column (`four_rows_grad`)
                let group = if r0 < split_at { 0 } else { 2 * g };
                let (sg, sb) = sums[group..group + 2 * g].split_at_mut(g);
                let mut four = xz.slice_mut(ndarray::s![r0..r0 + MEAN_ROWS, ..]);
                let (z0, rest) = four.as_slice_mut().expect("standard layout").split_at_mut(g);
                let (z1, rest) = rest.split_at_mut(g);
                let (z2, z3) = rest.split_at_mut(g);
                let d = |i: usize, blk: std::ops::Range<usize>| &dy.row(r0 + i).to_slice().unwrap()[blk];
                for k in 0..blocks {
                    let blk = k * h..(k + 1) * h;
                    // (plain loops: `std::array::from_fn`'s closures can stay calls in these copies)
                    let (mut m, mut inv) = ([(T::zero(), T::zero()); MEAN_ROWS], [T::zero(); MEAN_ROWS]);
                    for i in 0..MEAN_ROWS {
                        (m[i], inv[i]) = (means[i * blocks + k], rstd[[r0 + i, k]]);
                    }
                    let rows = FourRows {
                        gain: &gain[blk.clone()],
                        d0: d(0, blk.clone()),
                        d1: d(1, blk.clone()),
                        d2: d(2, blk.clone()),
                        d3: d(3, blk.clone()),
                        z0: &mut z0[blk.clone()],
                        z1: &mut z1[blk.clone()],
                        z2: &mut z2[blk.clone()],
                        z3: &mut z3[blk.clone()],
                        sg: &mut sg[blk.clone()],
                        sb: &mut sb[blk],
                    };
                    four_rows_grad(rows, m, inv);
                }
                continue;
            }
            for i in 0..rows {
                let r = r0 + i;
                let dr = dy.row(r).to_slice().unwrap();
                let zr = xz.row_mut(r).into_slice().unwrap();
                let group = if r < split_at { 0 } else { 2 * g };
                let (sg, sb) = sums[group..group + 2 * g].split_at_mut(g);
                for k in 0..blocks {
                    let blk = k * h..(k + 1) * h;
                    let (m1, m2) = means[i * blocks + k];
                    let inv = rstd[[r, k]];
                    for j in blk {
                        let (d, x) = (dr[j], zr[j]);
                        sg[j] += d * x;
                        sb[j] += d;
                        zr[j] = inv * (gain[j] * d - m1 - x * m2);
                    }
                }
            }
        }
    }
}

/// One thread's scratch for `Normalizer::forward_part` / `input_grad_part_in_place` (sized on
/// first use).
#[derive(Default)]
pub struct PartWork<T> {
    mine: Vec<T>,
    total: Vec<T>,
    mean: Vec<T>,
}

impl<T: Real> PartWork<T> {
    /// μ of the last `Normalizer::batch_stats` (or `forward_part`).
    pub(crate) fn mean(&self) -> &[T] {
        &self.mean
    }

    fn size(&mut self, n: usize) {
        for v in [&mut self.mine, &mut self.total, &mut self.mean] {
            v.clear();
            v.resize(n, T::zero());
        }
    }
}

/// Batch norm without touching the normalizer: on half of a step's rows, for two threads that
/// each run half of the batch (`steps.rs`), or on a whole step among steps that two threads
/// share (the input product, `recurrent::input_norm`; `peer` None). The column statistics of
/// the whole batch are joined through `recurrent::exchange` (sums of each half, added in a
/// fixed order, so both halves hold the same μ and σ), γ and β are read-only (their gradients
/// are summed per group of rows, `add_param_sums`), and the running statistics are updated
/// after the window from the statistics `forward_part` records (`apply_running`).
impl<T: Real> Normalizer<T> {
    /// As `forward` on this half's rows `z` of a step of `rows_total` rows, without the
    /// running update. `inv_r` receives 1/√(σ² + ε) per feature; `stats`, when given, μ then σ²
    /// (biased) of every feature, for `apply_running`; `work` holds μ (`mean`) afterwards, and
    /// in training σ² (`total`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_part(
        &self,
        z: ArrayView2<T>,
        t: usize,
        train: bool,
        peer: Option<&mut crate::nn::recurrent::Peer<T>>,
        rows_total: usize,
        work: &mut PartWork<T>,
        xhat: ArrayViewMut2<T>,
        inv_r: &mut [T],
        stats: Option<&mut [T]>,
        out: ArrayViewMut2<T>,
    ) {
        self.batch_stats(z, t, train, peer, rows_total, work, inv_r, stats);
        self.batch_apply(z, &work.mean, inv_r, xhat, out);
    }

    /// The statistics half of `forward_part`: μ into `work.mean`, 1/√(σ² + ε) into `inv_r`,
    /// and `stats` as there — the batch's in training (joined with the other half's through
    /// `peer`), the running ones of step t's slot otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn batch_stats(
        &self,
        z: ArrayView2<T>,
        t: usize,
        train: bool,
        mut peer: Option<&mut crate::nn::recurrent::Peer<T>>,
        rows_total: usize,
        work: &mut PartWork<T>,
        inv_r: &mut [T],
        stats: Option<&mut [T]>,
    ) {
        debug_assert!(!self.row_local());
        let g = z.ncols();
        let eps = T::r(EPS);
        work.size(g);
        if train {
            let n = T::r(rows_total as f64);
            col_sums(z, &mut work.mine);
            join(peer.as_deref_mut(), &work.mine, &mut work.mean);
            work.mean.iter_mut().for_each(|m| *m /= n);
            col_sq_devs(z, &work.mean, &mut work.mine);
            join(peer, &work.mine, &mut work.total);
            for (inv, tot) in inv_r.iter_mut().zip(work.total.iter_mut()) {
                let var = *tot / n;
                *inv = T::one() / (var + eps).sqrt();
                *tot = var;
            }
            if let Some(st) = stats {
                st[..g].copy_from_slice(&work.mean);
                st[g..].copy_from_slice(&work.total);
            }
        } else {
            let slot = t.min(self.slots() - 1);
            work.mean.iter_mut().zip(self.running_mean.row(slot)).for_each(|(m, &r)| *m = r);
            for (inv, &v) in inv_r.iter_mut().zip(self.running_var.row(slot)) {
                *inv = T::one() / (v + eps).sqrt();
            }
        }
    }

    /// The normalizing half of `forward_part`, on any rows of a step whose μ and 1/σ are known:
    /// x̂ = (z − μ)·(1/σ) into `xhat`, out += γ ⊙ x̂ + β.
    pub(crate) fn batch_apply(
        &self,
        z: ArrayView2<T>,
        mean: &[T],
        inv_r: &[T],
        xhat: ArrayViewMut2<T>,
        out: ArrayViewMut2<T>,
    ) {
        let (gain, bias) = (self.gain.value.as_slice().unwrap(), self.bias.value.as_slice().unwrap());
        normalize_affine(z, mean, inv_r, gain, bias, xhat, out);
    }

    /// `batch_apply`'s out += γ ⊙ x̂ + β alone, x̂ not stored: for callers whose backward forms
    /// x̂ again (batch norm of the input side in the time loop, `StepInput::BatchNormed`), the
    /// same bits in `out` with one store stream fewer.
    pub(crate) fn batch_apply_out(&self, z: ArrayView2<T>, mean: &[T], inv_r: &[T], out: ArrayViewMut2<T>) {
        let (gain, bias) = (self.gain.value.as_slice().unwrap(), self.bias.value.as_slice().unwrap());
        affine(z, mean, inv_r, gain, bias, out);
    }

    /// x̂ = (z − μ)·(1/σ) alone, as `batch_apply` computes it: a step's x̂ again, for backward.
    pub(crate) fn batch_xhat(&self, z: ArrayView2<T>, mean: &[T], inv_r: &[T], xhat: ArrayViewMut2<T>) {
        normalize(z, mean, inv_r, xhat);
    }

    /// The running statistics after a window run by `forward_part`: the in-loop update of
    /// `forward`, step by step in order, from each step's recorded μ and σ² (`stats`, steps ×
    /// 2·G·H) over `rows` rows per step.
    pub(crate) fn apply_running(&mut self, stats: ArrayView2<T>, t0: usize, rows: usize) {
        let g = stats.ncols() / 2;
        for (t, st) in stats.outer_iter().enumerate() {
            let st = st.to_slice().unwrap();
            self.update_running(t0 + t, &st[..g], &st[g..], rows);
        }
    }

    /// r ← (1 − 0.1)·r + 0.1·batch for in-window step t's slot, from the step's μ and biased σ²
    /// over `rows` rows (the running variance is unbiased).
    fn update_running(&mut self, t: usize, mean: &[T], var: &[T], rows: usize) {
        let slot = t.min(self.slots() - 1);
        let n = T::r(rows as f64);
        let mo = T::r(MOMENTUM);
        let unbias = if rows > 1 { n / (n - T::one()) } else { T::one() };
        let mut rm = self.running_mean.row_mut(slot);
        let mut rv = self.running_var.row_mut(slot);
        for j in 0..mean.len() {
            rm[j] = (T::one() - mo) * rm[j] + mo * mean[j];
            rv[j] = (T::one() - mo) * rv[j] + mo * var[j] * unbias;
        }
    }

    /// The column means of dx̂ = γ ⊙ dy and of dx̂ ⊙ x̂ over the whole batch of `rows_total`
    /// rows (this part's sums joined with the other half's), into `work.total`: m1 then m2.
    fn grad_means(
        &self,
        dy: ArrayView2<T>,
        xhat: ArrayView2<T>,
        peer: Option<&mut crate::nn::recurrent::Peer<T>>,
        rows_total: usize,
        work: &mut PartWork<T>,
    ) {
        work.size(2 * dy.ncols());
        col_grad_sums(self.gain.value.as_slice().unwrap(), dy, xhat, &mut work.mine);
        join(peer, &work.mine, &mut work.total);
        let n = T::r(rows_total as f64);
        work.total.iter_mut().for_each(|m| *m /= n);
    }
}

impl<T: Real> Normalizer<T> {
    /// Add to ∂L/∂γ and ∂L/∂β the sums that the in-place backwards accumulated: one row per
    /// group of rows (of the batch, or of the window's steps), γ's G·H sums then β's, the groups
    /// added in order.
    pub(crate) fn add_param_sums(&mut self, sums: ArrayView2<T>) {
        let g = sums.ncols() / 2;
        let dgain = self.gain.grad.as_slice_mut().unwrap();
        let dbias = self.bias.grad.as_slice_mut().unwrap();
        for j in 0..g {
            let (mut sg, mut sb) = (T::zero(), T::zero());
            for row in sums.rows() {
                sg += row[j];
                sb += row[g + j];
            }
            dgain[j] += sg;
            dbias[j] += sb;
        }
    }

    /// ∂L/∂z of batch norm for this half's rows (the backward of `forward_part`), the column
    /// means of dx̂ and dx̂ ⊙ x̂ joined over the whole batch of `rows_total` rows, in place: `xz`
    /// holds x̂ on entry and ∂L/∂z on exit, and each row's dy ⊙ x̂ and dy are added to its group's sums in `sums`
    /// (as `input_grad_rows_in_place`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn input_grad_part_in_place(
        &self,
        dy: ArrayView2<T>,
        xz: ArrayViewMut2<T>,
        inv_r: &[T],
        peer: Option<&mut crate::nn::recurrent::Peer<T>>,
        rows_total: usize,
        work: &mut PartWork<T>,
        split_at: usize,
        sums: &mut [T],
    ) {
        self.grad_means(dy, xz.view(), peer, rows_total, work);
        let (m1, m2) = work.total.split_at(dy.ncols());
        batch_input_grad_in_place(self.gain.value.as_slice().unwrap(), inv_r, m1, m2, dy, xz, split_at, sums);
    }
}

/// The whole batch's sums from this part's: joined with the other half's through `peer`, or
/// this part's alone when it is the whole batch (`peer` None).
fn join<T: Real>(peer: Option<&mut crate::nn::recurrent::Peer<T>>, mine: &[T], total: &mut [T]) {
    match peer {
        Some(p) => p.all_sum(mine, total),
        None => total.copy_from_slice(mine),
    }
}

crate::tensor::simd_kernel! {
    /// sums[j] = Σ_rows z[r, j]
    fn col_sums<T: Real>(z: ArrayView2<T>, sums: &mut [T]) {
        sums.iter_mut().for_each(|s| *s = T::zero());
        for r in 0..z.nrows() {
            for (s, &v) in sums.iter_mut().zip(z.row(r).to_slice().unwrap()) {
                *s += v;
            }
        }
    }
}

crate::tensor::simd_kernel! {
    /// out[j] = Σ_rows (z[r, j] − mean[j])²
    fn col_sq_devs<T: Real>(z: ArrayView2<T>, mean: &[T], out: &mut [T]) {
        out.iter_mut().for_each(|s| *s = T::zero());
        for r in 0..z.nrows() {
            for ((acc, &v), &m) in out.iter_mut().zip(z.row(r).to_slice().unwrap()).zip(mean) {
                *acc += (v - m) * (v - m);
            }
        }
    }
}

crate::tensor::simd_kernel! {
    /// x̂ = (z − μ)·(1/σ) (as `normalize_affine` computes it).
    fn normalize<T: Real>(z: ArrayView2<T>, mean: &[T], inv: &[T], xhat: ArrayViewMut2<T>) {
        let mut xhat = xhat;
        for r in 0..z.nrows() {
            let zr = z.row(r).to_slice().unwrap();
            let xr = xhat.row_mut(r).into_slice().unwrap();
            for j in 0..zr.len() {
                xr[j] = (zr[j] - mean[j]) * inv[j];
            }
        }
    }
}

crate::tensor::simd_kernel! {
    /// x̂ = (z − μ)·(1/σ) and out += γ ⊙ x̂ + β in one pass over the rows.
    fn normalize_affine<T: Real>(
        z: ArrayView2<T>,
        mean: &[T],
        inv: &[T],
        gain: &[T],
        bias: &[T],
        xhat: ArrayViewMut2<T>,
        out: ArrayViewMut2<T>,
    ) {
        let (mut xhat, mut out) = (xhat, out);
        for r in 0..z.nrows() {
            let zr = z.row(r).to_slice().unwrap();
            let xr = xhat.row_mut(r).into_slice().unwrap();
            let or = out.row_mut(r).into_slice().unwrap();
            for j in 0..zr.len() {
                let x = (zr[j] - mean[j]) * inv[j];
                xr[j] = x;
                or[j] += gain[j] * x + bias[j];
            }
        }
    }
}

crate::tensor::simd_kernel! {
    /// out += γ ⊙ x̂ + β with x̂ = (z − μ)·(1/σ), as `normalize_affine` computes both, x̂ not kept.
    fn affine<T: Real>(z: ArrayView2<T>, mean: &[T], inv: &[T], gain: &[T], bias: &[T], out: ArrayViewMut2<T>) {
        let mut out = out;
        for r in 0..z.nrows() {
            let zr = z.row(r).to_slice().unwrap();
            let or = out.row_mut(r).into_slice().unwrap();
            for j in 0..zr.len() {
                let x = (zr[j] - mean[j]) * inv[j];
                or[j] += gain[j] * x + bias[j];
            }
        }
    }
}

crate::tensor::simd_kernel! {
    /// sums[..g] = Σ_rows γ ⊙ dy, sums[g..] = Σ_rows γ ⊙ dy ⊙ x̂
    fn col_grad_sums<T: Real>(gain: &[T], dy: ArrayView2<T>, xhat: ArrayView2<T>, sums: &mut [T]) {
        let g = gain.len();
        let (m1, m2) = sums.split_at_mut(g);
        m1.iter_mut().chain(m2.iter_mut()).for_each(|s| *s = T::zero());
        for r in 0..dy.nrows() {
            let (dr, xr) = (dy.row(r).to_slice().unwrap(), xhat.row(r).to_slice().unwrap());
            for j in 0..g {
                let dx = gain[j] * dr[j];
                m1[j] += dx;
                m2[j] += dx * xr[j];
            }
        }
    }
}

crate::tensor::simd_kernel! {
    /// ∂L/∂z = (1/σ)·(γ ⊙ dy − m1 − x̂ ⊙ m2) over x̂ in `xz` (m1, m2 the column means of dx̂
    /// and dx̂ ⊙ x̂), and dy ⊙ x̂, dy added to the row's group's sums (`Normalizer::input_grad_part_in_place`).
    #[allow(clippy::too_many_arguments)]
    fn batch_input_grad_in_place<T: Real>(
        gain: &[T],
        inv: &[T],
        m1: &[T],
        m2: &[T],
        dy: ArrayView2<T>,
        xz: ArrayViewMut2<T>,
        split_at: usize,
        sums: &mut [T],
    ) {
        let (mut xz, g) = (xz, gain.len());
        for r in 0..dy.nrows() {
            let dr = dy.row(r).to_slice().unwrap();
            let zr = xz.row_mut(r).into_slice().unwrap();
            let group = if r < split_at { 0 } else { 2 * g };
            let (sg, sb) = sums[group..group + 2 * g].split_at_mut(g);
            for j in 0..g {
                let (d, x) = (dr[j], zr[j]);
                sg[j] += d * x;
                sb[j] += d;
                zr[j] = inv[j] * (gain[j] * d - m1[j] - x * m2[j]);
            }
        }
    }
}

/// Layer norm of each gate block of each row: the statistics (two passes: μ, then the
/// squared deviations from it), then x̂, 1/√(σ² + ε) and out += γ ⊙ x̂ + β in one pass.
/// A row's blocks take their statistics side by side (`block_stats`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn layer_forward<T: Real>(
    z: ArrayView2<T>,
    h: usize,
    eps: T,
    gain: &[T],
    bias: &[T],
    mut xhat: ArrayViewMut2<T>,
    mut rstd: ArrayViewMut2<T>,
    mut out: ArrayViewMut2<T>,
) {
    let blocks = z.ncols() / h;
    for r in 0..z.nrows() {
        let zr = z.row(r).to_slice().unwrap();
        let xr = xhat.row_mut(r).into_slice().unwrap();
        let or = out.row_mut(r).into_slice().unwrap();
        for k0 in (0..blocks).step_by(MAX_BLOCKS) {
            let mut stats = [(T::zero(), T::zero()); MAX_BLOCKS];
            let n = MAX_BLOCKS.min(blocks - k0);
            match n {
                1 => stats[..1].copy_from_slice(&block_stats::<T, 1>(zr, k0, h, eps)),
                2 => stats[..2].copy_from_slice(&block_stats::<T, 2>(zr, k0, h, eps)),
                3 => stats[..3].copy_from_slice(&block_stats::<T, 3>(zr, k0, h, eps)),
                _ => stats = block_stats::<T, MAX_BLOCKS>(zr, k0, h, eps),
            }
            for (k, &(mean, inv)) in (k0..).zip(&stats[..n]) {
                rstd[[r, k]] = inv;
                let blk = k * h..(k + 1) * h;
                let zs = &zr[blk.clone()];
                let (xs, os, gs, bs) = (&mut xr[blk.clone()], &mut or[blk.clone()], &gain[blk.clone()], &bias[blk]);
                for j in 0..h {
                    let x = (zs[j] - mean) * inv;
                    xs[j] = x;
                    os[j] += gs[j] * x + bs[j];
                }
            }
        }
    }
}

/// μ and 1/√(σ² + ε) of gate blocks k0 .. k0 + N of one row `zr` (blocks of `h`), each block's
/// sums in `sum`'s and `sum_sq_dev`'s order (so their bits), the N blocks side by side so that
/// the serial folds of their sums overlap instead of setting the pace block by block.
#[inline(always)]
fn block_stats<T: Real, const N: usize>(zr: &[T], k0: usize, h: usize, eps: T) -> [(T, T); N] {
    let hn = T::r(h as f64);
    let mut zs: [&[T]; N] = [&[]; N];
    for (i, zs) in zs.iter_mut().enumerate() {
        *zs = &zr[(k0 + i) * h..(k0 + i + 1) * h];
    }
    let mut mean = crate::tensor::sums(zs);
    for m in &mut mean {
        *m /= hn;
    }
    let var = crate::tensor::sums_sq_dev(zs, mean);
    let mut stats = [(T::zero(), T::zero()); N];
    for i in 0..N {
        stats[i] = (mean[i], T::one() / (var[i] / hn + eps).sqrt());
    }
    stats
}

/// Rows whose layer-norm backward means are summed side by side (`block_means`).
const MEAN_ROWS: usize = 4;
/// Gate blocks of a product at most (the LSTM's four).
const MAX_BLOCKS: usize = 4;

/// mean(dx̂) and mean(dx̂ ⊙ x̂) over one gate block of each of N rows (`gain`, each `dy`,
/// `xhat` the block's columns), dx̂ = γ ⊙ dy: one chain per row and mean, in column order,
/// the rows' chains interleaved (N = `MEAN_ROWS`, or 1 for the rows left over).
#[inline(always)]
fn block_means<T: Real, const N: usize>(gain: &[T], dy: [&[T]; N], xhat: [&[T]; N], hn: T) -> [(T, T); N] {
    let h = gain.len();
    let dy: [&[T]; N] = std::array::from_fn(|i| &dy[i][..h]);
    let xhat: [&[T]; N] = std::array::from_fn(|i| &xhat[i][..h]);
    let (mut m1, mut m2) = ([T::zero(); N], [T::zero(); N]);
    for j in 0..h {
        for i in 0..N {
            let dx = gain[j] * dy[i][j];
            m1[i] += dx;
            m2[i] += dx * xhat[i][j];
        }
    }
    std::array::from_fn(|i| (m1[i] / hn, m2[i] / hn))
}

/// One gate block of four rows of a step for `four_rows_grad` (separate slices, so that LLVM
/// knows the rows apart and vectorizes across columns). The backward's runs of MEAN_ROWS rows
/// take this path, so the two must stay equal.
const _: () = assert!(MEAN_ROWS == 4, "four_rows_grad takes a run of MEAN_ROWS rows as four fields");
struct FourRows<'a, T> {
    gain: &'a [T],
    d0: &'a [T],
    d1: &'a [T],
    d2: &'a [T],
    d3: &'a [T],
    /// x̂ on entry, ∂L/∂z on exit
    z0: &'a mut [T],
    z1: &'a mut [T],
    z2: &'a mut [T],
    z3: &'a mut [T],
    /// the rows' group's sums of dy ⊙ x̂ and dy
    sg: &'a mut [T],
    sb: &'a mut [T],
}

/// `input_grad_rows_in_place`'s per-row pass over four rows of one group at once, column by
/// column: each row's ∂L/∂z as there, and the four rows' dy ⊙ x̂ and dy added to the sums in
/// row order in registers — the same additions in the same order as four row passes, with
/// the sums read and written once per four rows instead of once per row (they were half of
/// the pass's loads and two thirds of its stores).
#[inline(always)]
fn four_rows_grad<T: Real>(r: FourRows<T>, means: [(T, T); MEAN_ROWS], inv: [T; MEAN_ROWS]) {
    let h = r.gain.len();
    let (d0, d1, d2, d3) = (&r.d0[..h], &r.d1[..h], &r.d2[..h], &r.d3[..h]);
    let (z0, z1, z2, z3) = (&mut r.z0[..h], &mut r.z1[..h], &mut r.z2[..h], &mut r.z3[..h]);
    let (sg, sb) = (&mut r.sg[..h], &mut r.sb[..h]);
    for j in 0..h {
        let gj = r.gain[j];
        let (mut a, mut b) = (sg[j], sb[j]);
        for (i, (d, z)) in
            [(d0[j], &mut z0[j]), (d1[j], &mut z1[j]), (d2[j], &mut z2[j]), (d3[j], &mut z3[j])].into_iter().enumerate()
        {
            let x = *z;
            a += d * x;
            b += d;
            *z = inv[i] * (gj * d - means[i].0 - x * means[i].1);
        }
        sg[j] = a;
        sb[j] = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn run(n: &mut Normalizer<f64>, z: &Array2<f64>, t: usize, train: bool) -> Array2<f64> {
        let (r, g) = z.dim();
        let (mut xhat, mut out) = (Array2::zeros((r, g)), Array2::zeros((r, g)));
        let mut rstd = Array2::zeros((n.rstd_rows_per_step(r), n.rstd_cols()));
        n.forward(z.view(), t, train, xhat.view_mut(), rstd.view_mut(), out.view_mut());
        out
    }

    #[test]
    fn separate_running_statistics_by_in_window_time() {
        // H = 1: four features (one per gate), batch of 2, two slots (T_max = 2).
        let mut n = Normalizer::<f64>::for_normalization(Normalization::BatchSeparate, "n", 1, 4, 2).unwrap();
        let z0 = array![[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 5.0, 0.0]];
        let z1 = array![[0.0, 0.0, 0.0, 0.0], [2.0, 4.0, 6.0, 8.0]];
        run(&mut n, &z0, 0, true);
        run(&mut n, &z1, 1, true);
        run(&mut n, &z1, 5, true); // t ≥ T_max goes to the last slot
        // slot 0: mean 2, unbiased var 2 for feature 0 → r = 0.9·0 + 0.1·2, 0.9·1 + 0.1·2
        assert!((n.running_mean[[0, 0]] - 0.2).abs() < 1e-15);
        assert!((n.running_var[[0, 0]] - 1.1).abs() < 1e-15);
        // slot 1 updated twice with feature 1's batch mean 2 and unbiased var 8
        let m = 0.9 * (0.1 * 2.0) + 0.1 * 2.0;
        let v = 0.9 * (0.9 + 0.1 * 8.0) + 0.1 * 8.0;
        assert!((n.running_mean[[1, 1]] - m).abs() < 1e-15 && (n.running_var[[1, 1]] - v).abs() < 1e-14);
        // evaluation at t = 1 uses slot 1's statistics, with γ = 1, β = 0
        n.bias.value.fill(0.5);
        let out = run(&mut n, &z1, 1, false);
        let want = (4.0 - m) / (v + EPS).sqrt() + 0.5;
        assert!((out[[1, 1]] - want).abs() < 1e-14, "{} vs {want}", out[[1, 1]]);
        // ... and the running statistics do not move in evaluation
        assert!((n.running_mean[[1, 1]] - m).abs() < 1e-15);
    }

    /// Layer norm's kernels (the run-time-chosen copies, f32) give the per-row formulas' bits:
    /// the statistics of each block as one 16-lane sum, ∂L/∂z and the γ, β sums row after row
    /// — whatever rows the kernels take side by side (row counts 1–13, a group boundary inside
    /// a run of four rows or not, H with and without a 16-lane tail, three and four blocks).
    #[test]
    fn layer_kernels_give_the_per_row_formulas_bits() {
        use crate::tensor::one_at_a_time as lanes;
        let bits = |a: &Array2<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (h, blocks) in [(3, 4), (17, 3), (100, 4), (40, 1)] {
            let g = h * blocks;
            let mut n = Normalizer::<f32>::for_normalization(Normalization::Layer, "n", h, blocks, 1).unwrap();
            n.gain.value = Array2::from_shape_fn((1, g), |(_, j)| 0.5 + (j % 7) as f32 * 0.125);
            n.bias.value = Array2::from_shape_fn((1, g), |(_, j)| (j % 5) as f32 * 0.1 - 0.2);
            let (gain, bias) = (n.gain.value.as_slice().unwrap().to_vec(), n.bias.value.as_slice().unwrap().to_vec());
            let hn = h as f32;
            for rows in 1..=13 {
                let z = Array2::from_shape_fn((rows, g), |(r, c)| ((r * 31 + c * 17) % 29) as f32 * 0.173 - 2.3);
                let dy = Array2::from_shape_fn((rows, g), |(r, c)| ((r * 13 + c * 7) % 19) as f32 * 0.041 - 0.37);
                let (mut xhat, mut rstd) = (Array2::zeros((rows, g)), Array2::zeros((rows, blocks)));
                let mut out = Array2::from_elem((rows, g), 0.25f32);
                n.forward_rows(z.view(), xhat.view_mut(), rstd.view_mut(), out.view_mut());
                let (mut want_x, mut want_r, mut want_o) =
                    (Array2::zeros((rows, g)), Array2::zeros((rows, blocks)), Array2::from_elem((rows, g), 0.25f32));
                for r in 0..rows {
                    for k in 0..blocks {
                        let zs = &z.row(r).to_slice().unwrap()[k * h..(k + 1) * h];
                        let mean = lanes(zs, |v| v) / hn;
                        let inv = 1.0 / (lanes(zs, |v| (v - mean) * (v - mean)) / hn + EPS as f32).sqrt();
                        want_r[[r, k]] = inv;
                        for j in k * h..(k + 1) * h {
                            let x = (z[[r, j]] - mean) * inv;
                            want_x[[r, j]] = x;
                            want_o[[r, j]] += gain[j] * x + bias[j];
                        }
                    }
                }
                assert_eq!((bits(&xhat), bits(&rstd), bits(&out)), (bits(&want_x), bits(&want_r), bits(&want_o)));
                for split_at in [0, rows / 2, 2.min(rows), rows] {
                    let (mut xz, mut sums) = (xhat.clone(), vec![0.5f32; 4 * g]);
                    n.input_grad_rows_in_place(dy.view(), xz.view_mut(), rstd.view(), split_at, &mut sums);
                    let (mut want_z, mut want_s) = (xhat.clone(), vec![0.5f32; 4 * g]);
                    for r in 0..rows {
                        let group = if r < split_at { 0 } else { 2 * g };
                        for k in 0..blocks {
                            let (mut m1, mut m2) = (0.0f32, 0.0f32);
                            for j in k * h..(k + 1) * h {
                                let dx = gain[j] * dy[[r, j]];
                                m1 += dx;
                                m2 += dx * xhat[[r, j]];
                            }
                            let (m1, m2) = (m1 / hn, m2 / hn);
                            for j in k * h..(k + 1) * h {
                                let (d, x) = (dy[[r, j]], xhat[[r, j]]);
                                want_s[group + j] += d * x;
                                want_s[group + g + j] += d;
                                want_z[[r, j]] = rstd[[r, k]] * (gain[j] * d - m1 - x * m2);
                            }
                        }
                    }
                    assert_eq!(bits(&xz), bits(&want_z), "H {h}, {rows} rows, split at {split_at}");
                    let sb = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(sb(&sums), sb(&want_s), "H {h}, {rows} rows, split at {split_at}");
                }
            }
        }
    }

    /// Batch norm's kernels (f32, the run-time-chosen copies) give the per-row formulas' bits:
    /// the column sums over the rows in row order, x̂, and ∂L/∂z with its column means and the
    /// γ, β sums of each group (1–13 rows, group boundaries anywhere: the bits a kernel that
    /// took rows side by side would have to keep — one did, and fails this when it adds its
    /// rows in another order).
    #[test]
    fn batch_kernels_give_the_per_row_formulas_bits() {
        let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let g = 4 * 19;
        let mut n = Normalizer::<f32>::for_normalization(Normalization::BatchShared, "n", 19, 4, 1).unwrap();
        n.gain.value = Array2::from_shape_fn((1, g), |(_, j)| 0.5 + (j % 7) as f32 * 0.125);
        n.bias.value = Array2::from_shape_fn((1, g), |(_, j)| (j % 5) as f32 * 0.1 - 0.2);
        let (gain, bias) = (n.gain.value.as_slice().unwrap().to_vec(), n.bias.value.as_slice().unwrap().to_vec());
        for rows in 1..=13 {
            let z = Array2::from_shape_fn((rows, g), |(r, c)| ((r * 31 + c * 17) % 29) as f32 * 0.173 - 2.3);
            let dy = Array2::from_shape_fn((rows, g), |(r, c)| ((r * 13 + c * 7) % 19) as f32 * 0.041 - 0.37);
            let (mut xhat, mut rstd) = (Array2::zeros((rows, g)), Array2::zeros((1, g)));
            let mut out = Array2::from_elem((rows, g), 0.25f32);
            n.forward(z.view(), 0, true, xhat.view_mut(), rstd.view_mut(), out.view_mut());
            let nf = rows as f32;
            let (mut mean, mut var) = (vec![0.0f32; g], vec![0.0f32; g]);
            for r in 0..rows {
                for j in 0..g {
                    mean[j] += z[[r, j]];
                }
            }
            mean.iter_mut().for_each(|m| *m /= nf);
            for r in 0..rows {
                for j in 0..g {
                    var[j] += (z[[r, j]] - mean[j]) * (z[[r, j]] - mean[j]);
                }
            }
            let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v / nf + EPS as f32).sqrt()).collect();
            let mut want_x = Array2::zeros((rows, g));
            let mut want_o = Array2::from_elem((rows, g), 0.25f32);
            for r in 0..rows {
                for j in 0..g {
                    let x = (z[[r, j]] - mean[j]) * inv[j];
                    want_x[[r, j]] = x;
                    want_o[[r, j]] += gain[j] * x + bias[j];
                }
            }
            assert_eq!(bits(rstd.as_slice().unwrap()), bits(&inv), "{rows} rows");
            assert_eq!(bits(xhat.as_slice().unwrap()), bits(want_x.as_slice().unwrap()), "{rows} rows");
            assert_eq!(bits(out.as_slice().unwrap()), bits(want_o.as_slice().unwrap()), "{rows} rows");
            let mut out_only = Array2::from_elem((rows, g), 0.25f32);
            n.batch_apply_out(z.view(), &mean, &inv, out_only.view_mut());
            assert_eq!(bits(out_only.as_slice().unwrap()), bits(want_o.as_slice().unwrap()), "{rows} rows, x̂ not kept");
            let (mut m1, mut m2) = (vec![0.0f32; g], vec![0.0f32; g]);
            for r in 0..rows {
                for j in 0..g {
                    let dx = gain[j] * dy[[r, j]];
                    m1[j] += dx;
                    m2[j] += dx * xhat[[r, j]];
                }
            }
            m1.iter_mut().chain(m2.iter_mut()).for_each(|m| *m /= nf);
            for split_at in [0, rows / 2, 2.min(rows), 5.min(rows), rows] {
                let (mut xz, mut sums, mut work) = (xhat.clone(), vec![0.5f32; 4 * g], PartWork::default());
                n.input_grad_part_in_place(dy.view(), xz.view_mut(), &inv, None, rows, &mut work, split_at, &mut sums);
                let (mut want_z, mut want_s) = (xhat.clone(), vec![0.5f32; 4 * g]);
                for r in 0..rows {
                    let group = if r < split_at { 0 } else { 2 * g };
                    for j in 0..g {
                        let (d, x) = (dy[[r, j]], xhat[[r, j]]);
                        want_s[group + j] += d * x;
                        want_s[group + g + j] += d;
                        want_z[[r, j]] = inv[j] * (gain[j] * d - m1[j] - x * m2[j]);
                    }
                }
                assert_eq!(
                    bits(xz.as_slice().unwrap()),
                    bits(want_z.as_slice().unwrap()),
                    "{rows} rows, split at {split_at}"
                );
                assert_eq!(bits(&sums), bits(&want_s), "{rows} rows, split at {split_at}");
            }
        }
    }

    #[test]
    fn shared_statistics_and_layer_norm_by_hand() {
        let mut n = Normalizer::<f64>::for_normalization(Normalization::BatchShared, "n", 1, 4, 35).unwrap();
        assert_eq!(n.slots(), 1);
        let z = array![[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 5.0, 0.0]];
        let out = run(&mut n, &z, 7, true);
        // feature 0: mean 2, biased var 1 → x̂ = ∓1/√(1 + ε); feature 1 has zero variance → 0
        assert!((out[[0, 0]] + 1.0 / (1.0 + EPS).sqrt()).abs() < 1e-15 && out[[0, 1]] == 0.0);
        let mut ln = Normalizer::<f64>::for_normalization(Normalization::Layer, "l", 2, 4, 1).unwrap();
        let z = array![[1.0, 3.0, 0.0, 0.0, 5.0, 5.0, -1.0, 1.0]];
        let out = run(&mut ln, &z, 0, true);
        // block 0: mean 2, var 1 → [−1, 1]/√(1+ε); block 1: zeros → 0; block 3: ±1/√(1+ε)
        let k = 1.0 / (1.0 + EPS).sqrt();
        let want = [-k, k, 0.0, 0.0, 0.0, 0.0, -k, k];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-15, "{out}");
        }
    }
}
