//! The LSTM cell (docs/SPEC.md §1), one step over some rows of the batch. Gate blocks are
//! stacked i, f, a, o (a = candidate; PyTorch's "g"), H rows each:
//!   [i f a o] = N_x(W_x x_t) + N_h(W_h h_{t-1}) + b
//!   c_t = σ(i) ⊙ tanh(a) + σ(f) ⊙ c_{t-1};   h_t = σ(o) ⊙ tanh(c_t)
//! The elementwise kernels run once per batch row, compiled for AVX-512 and AVX2 (`simd_kernel!`).

use ndarray::{ArrayView2, ArrayViewMut2};

use super::{Cell, StepGradRows, StepRows};
use crate::tensor::{Real, simd_kernel};

/// The LSTM cell.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lstm;

impl Cell for Lstm {
    const GATES: usize = 4;
    const CARRIES_C: bool = true;
    const PRODUCT_APART: bool = false;
    const AUX: bool = false;

    fn forward<T: Real>(s: StepRows<'_, T>, hidden: usize) {
        forward_rows(s.gates, s.c_prev, s.c, s.h, hidden);
    }

    fn backward<T: Real>(s: StepGradRows<'_, T>, hidden: usize) -> f64 {
        backward_rows(s.gates, s.c_prev, s.c, s.d_out, s.dh, s.dc, hidden)
    }
}

/// One step of the fused cell over some rows: pre-activations in `g` (rows, 4H) become
/// activations; writes c_t and h_t (the backward recomputes tanh(c_t) rather than the window
/// keeping a (T·B, H) buffer of it: 31 MB on sequential MNIST).
fn forward_rows<T: Real>(
    mut g: ArrayViewMut2<T>,
    c_prev: ArrayView2<T>,
    mut c: ArrayViewMut2<T>,
    mut h_out: ArrayViewMut2<T>,
    hidden: usize,
) {
    for b in 0..g.nrows() {
        let rows = CellRow {
            g: g.row_mut(b).into_slice().unwrap(),
            c_prev: c_prev.row(b).to_slice().unwrap(),
            c: c.row_mut(b).into_slice().unwrap(),
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
    h: &'a mut [T],
}

simd_kernel! {
    /// The cell's forward on one batch row (a kernel: compiled for AVX-512 and AVX2).
    fn cell_forward_row<T: Real>(r: CellRow<T>, hidden: usize) {
        let (gi, rest) = r.g.split_at_mut(hidden);
        let (gf, rest) = rest.split_at_mut(hidden);
        let (ga, go) = rest.split_at_mut(hidden);
        let (cp, cr, hr) = (&r.c_prev[..hidden], &mut r.c[..hidden], &mut r.h[..hidden]);
        for j in 0..hidden {
            let i = gi[j].sigmoid();
            let f = gf[j].sigmoid();
            let a = ga[j].tanh_fast();
            let o = go[j].sigmoid();
            let cj = i * a + f * cp[j];
            let tc = cj.tanh_fast();
            (gi[j], gf[j], ga[j], go[j]) = (i, f, a, o);
            cr[j] = cj;
            hr[j] = o * tc;
        }
    }
}

/// One step back through the cell. On entry `g` holds the activations, `dh` ∂L/∂h_t from the
/// future (recurrent path) and `dc` ∂L/∂c_t from the future; `d_out` adds the gradient from
/// above. Overwrites the activations with the pre-activation gradients, leaves ∂L/∂c_{t-1} in
/// `dc`, and returns ‖∂L/∂h_t‖².
fn backward_rows<T: Real>(
    mut g: ArrayViewMut2<T>,
    c_prev: ArrayView2<T>,
    c: ArrayView2<T>,
    d_out: ArrayView2<T>,
    mut dh: ArrayViewMut2<T>,
    mut dc: ArrayViewMut2<T>,
    hidden: usize,
) -> f64 {
    let mut sq = 0.0f64;
    for b in 0..g.nrows() {
        let rows = CellGradRow {
            g: g.row_mut(b).into_slice().unwrap(),
            c_prev: c_prev.row(b).to_slice().unwrap(),
            c: c.row(b).to_slice().unwrap(),
            d_out: d_out.row(b).to_slice().unwrap(),
            dh: dh.row_mut(b).into_slice().unwrap(),
            dc: dc.row_mut(b).into_slice().unwrap(),
        };
        sq += cell_backward_row(rows, hidden);
    }
    sq
}

struct CellGradRow<'a, T> {
    /// the activations on entry, their pre-activations' gradients on exit
    g: &'a mut [T],
    c_prev: &'a [T],
    c: &'a [T],
    d_out: &'a [T],
    dh: &'a mut [T],
    dc: &'a mut [T],
}

simd_kernel! {
    /// The cell's backward on one batch row; returns Σ_j (∂L/∂h_t[j])² of the row.
    fn cell_backward_row<T: Real>(r: CellGradRow<T>, hidden: usize) -> f64 {
        let one = T::one();
        let (gi, rest) = r.g.split_at_mut(hidden);
        let (gf, rest) = rest.split_at_mut(hidden);
        let (ga, go) = rest.split_at_mut(hidden);
        let go = &mut go[..hidden];
        let (cp, cr, dor) = (&r.c_prev[..hidden], &r.c[..hidden], &r.d_out[..hidden]);
        let (dhr, dcr) = (&mut r.dh[..hidden], &mut r.dc[..hidden]);
        for j in 0..hidden {
            // tanh(c_t) again, as the forward computed it from the same c_t; each unit's four
            // activations are read before its four gradients replace them
            let (i, f, a, o, tc) = (gi[j], gf[j], ga[j], go[j], cr[j].tanh_fast());
            let dht = dhr[j] + dor[j];
            let dct = dcr[j] + dht * o * (one - tc * tc);
            gi[j] = dct * a * i * (one - i);
            gf[j] = dct * cp[j] * f * (one - f);
            ga[j] = dct * i * (one - a * a);
            go[j] = dht * tc * o * (one - o);
            dcr[j] = dct * f;
        }
        // ‖∂L/∂h_t‖² of the row, in its own loop so the one above has no reduction to serialize;
        // in f64, since exploding gradients (plain bc) square past f32's range while finite
        crate::tensor::sum_sq_f64_of_sum(dhr, dor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    /// The kernels' vector loops (AVX-512 or AVX2 copies, with a scalar remainder) give every
    /// unit the plain per-unit formulas' numbers bit for bit, at every remainder of the vector
    /// width (H = 1–40, MNIST's 100, word's 300 and 650), in the forward and the backward:
    /// what a layer computes does not depend on where a unit falls in a row or on the CPU.
    #[test]
    fn cell_kernels_give_the_per_unit_formulas_bits() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(11);
        for hidden in (1..=40).chain([100, 300, 650]) {
            let mut draw =
                |cols: usize, scale: f32| Array2::from_shape_fn((2, cols), |_| (rng.random::<f32>() - 0.5) * scale);
            let (g0, c_prev, d_out, dh, dc0) =
                (draw(4 * hidden, 8.0), draw(hidden, 2.0), draw(hidden, 1.0), draw(hidden, 1.0), draw(hidden, 1.0));
            let (mut g, mut c, mut h) = (g0.clone(), Array2::zeros((2, hidden)), Array2::zeros((2, hidden)));
            forward_rows(g.view_mut(), c_prev.view(), c.view_mut(), h.view_mut(), hidden);
            let (mut dg, mut dc) = (g.clone(), dc0.clone());
            let mut dh_ = dh.clone();
            let sq = backward_rows(
                dg.view_mut(),
                c_prev.view(),
                c.view(),
                d_out.view(),
                dh_.view_mut(),
                dc.view_mut(),
                hidden,
            );
            let mut want_sq = 0.0f64;
            for b in 0..2 {
                for j in 0..hidden {
                    let pre = |k: usize| g0[[b, k * hidden + j]];
                    let (i, f, a, o) = (pre(0).sigmoid(), pre(1).sigmoid(), pre(2).tanh_fast(), pre(3).sigmoid());
                    let cj = i * a + f * c_prev[[b, j]];
                    let tc = cj.tanh_fast();
                    let same = |x: f32, y: f32| x.to_bits() == y.to_bits();
                    let fwd = [i, f, a, o].iter().enumerate().all(|(k, &v)| same(g[[b, k * hidden + j]], v));
                    assert!(
                        fwd && same(c[[b, j]], cj) && same(h[[b, j]], o * tc),
                        "H {hidden} row {b} unit {j}: forward"
                    );
                    let dht = dh[[b, j]] + d_out[[b, j]];
                    let dct = dc0[[b, j]] + dht * o * (1.0 - tc * tc);
                    let want = [
                        dct * a * i * (1.0 - i),
                        dct * c_prev[[b, j]] * f * (1.0 - f),
                        dct * i * (1.0 - a * a),
                        dht * tc * o * (1.0 - o),
                    ];
                    let bwd = want.iter().enumerate().all(|(k, &v)| same(dg[[b, k * hidden + j]], v));
                    assert!(bwd && same(dc[[b, j]], dct * f), "H {hidden} row {b} unit {j}: backward");
                    want_sq += f64::from(dht) * f64::from(dht);
                }
            }
            assert!((sq - want_sq).abs() <= 1e-9 * want_sq.max(1.0), "H {hidden}: ‖∂L/∂h‖² {sq} vs {want_sq}");
            assert_eq!(dh_, dh, "∂L/∂h from the future is read, not written");
        }
    }
}
