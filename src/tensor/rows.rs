//! Window-sized passes that add rows together — the bias gradient Σ_rows ∂L/∂G, a one-hot
//! input's ∂L/∂W_x (each row added into its token's row) — split between two threads by
//! columns: every output keeps its terms in row order, so the sums are the same bits on any
//! thread count (a split by rows would add two partial sums instead). On one thread these
//! passes cost twice their share of a step, the other core idling (char with batch norm: 6 %
//! of its wall time).

use ndarray::{Array1, ArrayView2, ArrayViewMut2, Axis};

use super::{Real, threads};

/// From this many elements of the summed rows the pass runs on two threads.
const PARALLEL_MIN: usize = 1 << 18;

/// Σ over the rows of `a`: out[j] = ((0 + a[0, j]) + a[1, j]) + … (ndarray's
/// `sum_axis(Axis(0))`, term for term).
pub fn column_sums<T: Real>(a: ArrayView2<T>) -> Array1<T> {
    let mut out = Array1::zeros(a.ncols());
    by_columns(out.view_mut().insert_axis(Axis(0)), a, &|mut out, a| {
        let out = out.as_slice_mut().expect("one contiguous row");
        for row in a.rows() {
            out.iter_mut().zip(row.iter()).for_each(|(o, &v)| *o += v);
        }
    });
    out
}

/// out[ids[r]] += a[r] for every row r of `a`, in row order.
pub fn add_rows_at<T: Real>(out: ArrayViewMut2<T>, ids: &[u32], a: ArrayView2<T>) {
    assert_eq!(ids.len(), a.nrows(), "add_rows_at: one id per row");
    by_columns(out, a, &|mut out, a| {
        for (row, &id) in a.rows().into_iter().zip(ids) {
            out.row_mut(id as usize).zip_mut_with(&row, |o, &v| *o += v);
        }
    });
}

/// f(out, a) on all columns, or on each half of the columns on its own thread.
fn by_columns<T: Real>(out: ArrayViewMut2<T>, a: ArrayView2<T>, f: &(dyn Fn(ArrayViewMut2<T>, ArrayView2<T>) + Sync)) {
    assert_eq!(out.ncols(), a.ncols(), "column counts differ");
    let n = a.ncols();
    if threads() > 1 && a.len() >= PARALLEL_MIN && n >= 32 {
        // at a multiple of 16 columns, so that both halves' rows start vector-aligned alike
        let cut = n / 2 / 16 * 16;
        let (o0, o1) = out.split_at(Axis(1), cut);
        let (a0, a1) = a.split_at(Axis(1), cut);
        rayon::join(|| f(o0, a0), || f(o1, a1));
    } else {
        f(out, a);
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;
    use crate::tensor::set_threads;

    #[test]
    fn column_split_passes_match_one_thread_bit_for_bit() {
        set_threads(2);
        // 700 × 400: above PARALLEL_MIN, columns not a multiple of 32; values whose sums round
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
