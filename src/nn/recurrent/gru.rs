//! The GRU cell (docs/SPEC.md §6), one step over some rows of the batch. Gate blocks r, z, n,
//! H rows each; the recurrent product reaches the cell apart from the input side:
//!   r   = σ(N_r^x(W_xr x_t) + N_r^h(W_hr h_{t−1}) + b_r)
//!   z   = σ(N_z^x(W_xz x_t) + N_z^h(W_hz h_{t−1}) + b_z)
//!   u   = N_n^h(W_hn h_{t−1}) + b_hn
//!   n   = tanh(N_n^x(W_xn x_t) + b_n + r ⊙ u)
//!   h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}
//! Without normalization this is PyTorch's nn.GRU (b_ih = [b_r, b_z, b_n], b_hh = [0, 0, b_hn]).
//! Backward, with δ = ∂L/∂h_t: ∂n̂ = δ(1 − z)(1 − n²) (n̂ the candidate's pre-activation),
//! ∂ẑ = δ(h_{t−1} − n)·z(1 − z), ∂r̂ = ∂n̂·u·r(1 − r); the input side gets (∂r̂, ∂ẑ, ∂n̂), the
//! recurrent product (∂r̂, ∂ẑ, ∂n̂·r), and h_{t−1} directly δ·z.

use super::{Cell, StepGradRows, StepRows};
use crate::tensor::{Real, simd_kernel};

/// The GRU cell.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gru;

impl Cell for Gru {
    const GATES: usize = 3;
    const CARRIES_C: bool = false;
    const PRODUCT_APART: bool = true;
    const AUX: bool = true;

    fn forward<T: Real>(mut s: StepRows<'_, T>, hidden: usize) {
        for b in 0..s.gates.nrows() {
            let row = GruRow {
                g: s.gates.row_mut(b).into_slice().unwrap(),
                rec: s.rec.row(b).to_slice().unwrap(),
                rec_bias: s.rec_bias,
                h_prev: s.h_prev.row(b).to_slice().unwrap(),
                h: s.h.row_mut(b).into_slice().unwrap(),
                u: s.aux.row_mut(b).into_slice().unwrap(),
            };
            gru_forward_row(row, hidden);
        }
    }

    fn backward<T: Real>(mut s: StepGradRows<'_, T>, hidden: usize) -> f64 {
        let mut sq = 0.0;
        for b in 0..s.gates.nrows() {
            let row = GruGradRow {
                g: s.gates.row_mut(b).into_slice().unwrap(),
                h_prev: s.h_prev.row(b).to_slice().unwrap(),
                u: s.aux.row(b).to_slice().unwrap(),
                d_out: s.d_out.row(b).to_slice().unwrap(),
                dh: s.dh.row_mut(b).into_slice().unwrap(),
                dg_rec: s.dg_rec.row_mut(b).into_slice().unwrap(),
            };
            sq += gru_backward_row(row, hidden);
        }
        sq
    }
}

/// One batch row of the forward's buffers.
struct GruRow<'a, T> {
    g: &'a mut [T],
    rec: &'a [T],
    rec_bias: &'a [T],
    h_prev: &'a [T],
    h: &'a mut [T],
    u: &'a mut [T],
}

simd_kernel! {
    /// The GRU's forward on one batch row: pre-activations in `g` become (r, z, n).
    fn gru_forward_row<T: Real>(r: GruRow<T>, hidden: usize) {
        let one = T::one();
        let (gr, rest) = r.g.split_at_mut(hidden);
        let (gz, gn) = rest.split_at_mut(hidden);
        let gn = &mut gn[..hidden];
        let (rr, rz, rn) = (&r.rec[..hidden], &r.rec[hidden..2 * hidden], &r.rec[2 * hidden..3 * hidden]);
        let (bn, hp, h, u) = (&r.rec_bias[..hidden], &r.h_prev[..hidden], &mut r.h[..hidden], &mut r.u[..hidden]);
        for j in 0..hidden {
            let rg = (gr[j] + rr[j]).sigmoid();
            let zg = (gz[j] + rz[j]).sigmoid();
            let uj = rn[j] + bn[j];
            let n = (gn[j] + rg * uj).tanh_fast();
            (gr[j], gz[j], gn[j]) = (rg, zg, n);
            u[j] = uj;
            h[j] = (one - zg) * n + zg * hp[j];
        }
    }
}

/// One batch row of the backward's buffers.
struct GruGradRow<'a, T> {
    /// the activations (r, z, n) on entry, the input side's pre-activation gradients on exit
    g: &'a mut [T],
    h_prev: &'a [T],
    u: &'a [T],
    d_out: &'a [T],
    dh: &'a mut [T],
    dg_rec: &'a mut [T],
}

simd_kernel! {
    /// The GRU's backward on one batch row; returns Σ_j (∂L/∂h_t[j])² of the row.
    fn gru_backward_row<T: Real>(r: GruGradRow<T>, hidden: usize) -> f64 {
        let one = T::one();
        let (gr, rest) = r.g.split_at_mut(hidden);
        let (gz, gn) = rest.split_at_mut(hidden);
        let gn = &mut gn[..hidden];
        let (hp, u, dor, dh) = (&r.h_prev[..hidden], &r.u[..hidden], &r.d_out[..hidden], &mut r.dh[..hidden]);
        let (dqr, rest) = r.dg_rec.split_at_mut(hidden);
        let (dqz, dqn) = rest.split_at_mut(hidden);
        // ‖∂L/∂h_t‖² of the row first, in its own loop (a reduction would serialize the one
        // below), in f64: exploding gradients square past f32's range while finite
        let sq = crate::tensor::sum_sq_f64_of_sum(dh, dor);
        for j in 0..hidden {
            // each unit's three activations are read before its gradients replace them
            let (rg, zg, n) = (gr[j], gz[j], gn[j]);
            let d = dh[j] + dor[j];
            let dn = d * (one - zg) * (one - n * n);
            let dz = d * (hp[j] - n) * zg * (one - zg);
            let dr = dn * u[j] * rg * (one - rg);
            (gr[j], gz[j], gn[j]) = (dr, dz, dn);
            (dqr[j], dqz[j], dqn[j]) = (dr, dz, dn * rg);
            dh[j] = d * zg;
        }
        sq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn one_step_by_hand() {
        // H = 1: input-side pre-activations (r, z, n) = (0.3, -0.2, 0.5), recurrent product
        // (0.1, 0.4, -0.6), b_hn = 0.2, h_{t-1} = 0.7
        let mut gates = array![[0.3f64, -0.2, 0.5]];
        let rec = array![[0.1f64, 0.4, -0.6]];
        let (h_prev, mut h, mut u) = (array![[0.7f64]], Array2::zeros((1, 1)), Array2::zeros((1, 1)));
        let (mut c0, c1) = (Array2::<f64>::zeros((1, 0)), Array2::<f64>::zeros((1, 0)));
        let step = StepRows {
            gates: gates.view_mut(),
            rec: rec.view(),
            rec_bias: &[0.2],
            h_prev: h_prev.view(),
            h: h.view_mut(),
            c_prev: c1.view(),
            c: c0.view_mut(),
            aux: u.view_mut(),
        };
        Gru::forward(step, 1);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (r, z) = (sig(0.4), sig(0.2));
        let uu = -0.6 + 0.2;
        let n = (0.5 + r * uu).tanh();
        assert!((u[[0, 0]] - uu).abs() < 1e-15);
        assert!(
            (gates[[0, 0]] - r).abs() < 1e-15 && (gates[[0, 1]] - z).abs() < 1e-15 && (gates[[0, 2]] - n).abs() < 1e-15
        );
        assert!((h[[0, 0]] - ((1.0 - z) * n + z * 0.7)).abs() < 1e-15, "h = (1 − z)n + z h_prev");
    }
}
