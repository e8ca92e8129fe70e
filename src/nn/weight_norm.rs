//! Weight normalization of a quantized matrix, row by row (docs/SPEC.md §1):
//!   W_eff[j,:] = g_j · Q(W)[j,:] / (‖Q(W)[j,:]‖₂ + 1e-8)
//! Any scale α of the quantizer cancels. Matrices arrive transposed, (in, 4H): row j of W is
//! column j here. An all-zero row (possible with tc) keeps the formula and takes the norm's
//! derivative as 0, so no NaN appears.

use ndarray::{Array1, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

use crate::tensor::Real;

const EPS: f64 = 1e-8;

/// Row norms of a (rows, in) matrix.
pub fn row_norms<T: Real>(w: ArrayView2<T>) -> Array1<T> {
    w.rows().into_iter().map(|r| r.iter().map(|&x| x * x).sum::<T>().sqrt()).collect()
}

/// eff_t[:, j] = g_j · q_t[:, j] / (‖q_t[:, j]‖ + ε)
pub fn forward<T: Real>(q_t: ArrayView2<T>, gain: ArrayView1<T>, mut eff_t: ArrayViewMut2<T>) {
    let norms = row_norms(q_t.t());
    let eps = T::r(EPS);
    let scale: Array1<T> = norms.iter().zip(gain.iter()).map(|(&n, &g)| g / (n + eps)).collect();
    for (mut e, q) in eff_t.rows_mut().into_iter().zip(q_t.rows()) {
        for ((e, &q), &s) in e.iter_mut().zip(q.iter()).zip(scale.iter()) {
            *e = q * s;
        }
    }
}

/// With s_j = ‖q_j‖ + ε and u = Σ_i d_eff[i,j]·q[i,j]:
///   ∂L/∂g_j = u / s_j;   ∂L/∂q_j = (g_j/s_j)·d_eff_j − (g_j·u / (s_j²·‖q_j‖))·q_j
/// Accumulates into `d_gain` and (through the STE) into `d_latent_t`, both transposed views.
pub fn backward<T: Real>(
    q_t: ArrayView2<T>,
    gain: ArrayView1<T>,
    d_eff_t: ArrayView2<T>,
    mut d_gain: ArrayViewMut1<T>,
    mut d_latent_t: ArrayViewMut2<T>,
) {
    let norms = row_norms(q_t.t());
    let eps = T::r(EPS);
    let cols = q_t.ncols();
    let mut u = vec![T::zero(); cols];
    for (q, d) in q_t.rows().into_iter().zip(d_eff_t.rows()) {
        for j in 0..cols {
            u[j] += q[j] * d[j];
        }
    }
    let mut a = vec![T::zero(); cols]; // g/s
    let mut b = vec![T::zero(); cols]; // g·u/(s²‖q‖), 0 for an all-zero row
    for j in 0..cols {
        let s = norms[j] + eps;
        d_gain[j] += u[j] / s;
        a[j] = gain[j] / s;
        b[j] = if norms[j] > T::zero() { gain[j] * u[j] / (s * s * norms[j]) } else { T::zero() };
    }
    for ((q, d), mut out) in q_t.rows().into_iter().zip(d_eff_t.rows()).zip(d_latent_t.rows_mut()) {
        for j in 0..cols {
            out[j] += a[j] * d[j] - b[j] * q[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, array};

    #[test]
    fn rows_are_rescaled_to_their_gain_and_zero_rows_stay_finite() {
        // W rows: [3, 4] (norm 5) and [0, 0]; transposed layout (in, rows).
        let q_t = array![[3.0f64, 0.0], [4.0, 0.0]];
        let gain = array![2.0, 7.0];
        let mut eff = Array2::zeros((2, 2));
        forward(q_t.view(), gain.view(), eff.view_mut());
        let s = 5.0 + EPS;
        assert_eq!(eff, array![[2.0 * 3.0 / s, 0.0], [2.0 * 4.0 / s, 0.0]]);
        let d = array![[1.0, 0.5], [-1.0, 2.0]];
        let mut dg = Array1::zeros(2);
        let mut dq = Array2::zeros((2, 2));
        backward(q_t.view(), gain.view(), d.view(), dg.view_mut(), dq.view_mut());
        // row 0: u = 3·1 − 4·1 = −1; dg = u/s; dq = (g/s)·d − g·u/(s²·5)·q
        assert!((dg[0] - (-1.0 / s)).abs() < 1e-15);
        let want0 = [2.0 / s * 1.0 + 2.0 / (s * s * 5.0) * 3.0, -(2.0 / s) + 2.0 / (s * s * 5.0) * 4.0];
        assert!((dq[[0, 0]] - want0[0]).abs() < 1e-15 && (dq[[1, 0]] - want0[1]).abs() < 1e-15);
        // zero row: the norm's derivative is taken as 0, so dq = (g/ε)·d, finite
        assert_eq!(dg[1], 0.0);
        assert_eq!(dq.column(1).to_vec(), vec![7.0 / EPS * 0.5, 7.0 / EPS * 2.0]);
    }
}
