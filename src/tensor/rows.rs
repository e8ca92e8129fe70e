//! Window-sized passes that add rows together — the bias gradient Σ_rows ∂L/∂G, a one-hot
//! input's ∂L/∂W_x (each row added into its token's row) — over whole rows, in row order, on
//! the calling thread. The layer runs the two side by side, one thread each
//! (`Layer::backward`). Splitting one pass by columns between two threads (each output's
//! terms still in row order, so the same bits) was tried: on an AMD Zen 4 host a thread that
//! sums the first half of every row of MNIST's (78400, 400) gate window takes 10.8–15.4 ms,
//! longer than one that sums whole rows (5.8–6.6 ms: the prefetchers fetch the other half's
//! lines too, and Zen's L3 holds only what an L2 evicted), so the halves on two threads took
//! 13.8–17.8 ms, and the two passes split so 41.5–46.0 ms against 9.7–11.8 side by side
//! (`cargo run --release --example row_passes`; `results/bench/ROUND3.md`, session 16).

use ndarray::{Array1, ArrayView2, ArrayViewMut2};

use super::Real;

/// Σ over the rows of `a`: out[j] = ((0 + a[0, j]) + a[1, j]) + … (ndarray's
/// `sum_axis(Axis(0))`, term for term).
pub fn column_sums<T: Real>(a: ArrayView2<T>) -> Array1<T> {
    let mut out = Array1::zeros(a.ncols());
    let sums = out.as_slice_mut().expect("a new array is contiguous");
    for row in a.rows() {
        sums.iter_mut().zip(row.iter()).for_each(|(o, &v)| *o += v);
    }
    out
}

/// out[ids[r]] += a[r] for every row r of `a`, in row order.
pub fn add_rows_at<T: Real>(mut out: ArrayViewMut2<T>, ids: &[u32], a: ArrayView2<T>) {
    assert_eq!(ids.len(), a.nrows(), "add_rows_at: one id per row");
    assert_eq!(out.ncols(), a.ncols(), "column counts differ");
    for (row, &id) in a.rows().into_iter().zip(ids) {
        out.row_mut(id as usize).zip_mut_with(&row, |o, &v| *o += v);
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, Axis};

    use super::*;

    #[test]
    fn row_passes_match_ndarray_and_the_plain_loop_bit_for_bit() {
        // 700 × 400, columns not a multiple of 32; values whose sums round
        let a = Array2::from_shape_fn((700, 400), |(r, c)| ((r * 7919 + c * 104_729) % 1000) as f32 * 1e-3 - 0.4999);
        let want = a.sum_axis(Axis(0));
        let got = column_sums(a.view());
        assert!(want.iter().zip(&got).all(|(w, g)| w.to_bits() == g.to_bits()), "column sums");
        let ids: Vec<u32> = (0..700).map(|r| ((r * 31) % 50) as u32).collect();
        let mut want = Array2::<f32>::zeros((50, 400));
        for (row, &id) in a.rows().into_iter().zip(&ids) {
            want.row_mut(id as usize).zip_mut_with(&row, |d, &v| *d += v);
        }
        let mut got = Array2::<f32>::zeros((50, 400));
        add_rows_at(got.view_mut(), &ids, a.view());
        assert!(want.iter().zip(&got).all(|(w, g)| w.to_bits() == g.to_bits()), "rows added at ids");
    }
}
