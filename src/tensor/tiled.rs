//! Element-wise passes between a matrix and a transposed one (the effective weights are kept
//! as Wᵀ for the products, the latent ones as W), in tiles: one of the two is read or written
//! with a stride of a whole row, and element by element over the whole matrix every access
//! of that one misses L1 (W_h of PTB-char: 8 KB apart); in 32 × 32 tiles its lines stay in L1.

use ndarray::{ArrayView2, ArrayViewMut2, Axis, Zip, s};

/// Tile side, in elements.
const TILE: usize = 32;

/// f(out[i, j], x[i, j]) for every element (same shape), tile by tile; the rows split between
/// two threads when there are two and the matrix is large (an element-wise pass: the same
/// values on any thread count).
pub fn zip_tiled<T: Send, U: Sync>(out: ArrayViewMut2<T>, x: ArrayView2<U>, f: impl Fn(&mut T, &U) + Sync) {
    assert_eq!(out.dim(), x.dim(), "zip_tiled: shapes differ");
    let rows = out.nrows();
    if crate::tensor::threads() > 1 && out.len() >= PARALLEL_MIN && rows >= 2 * TILE {
        let cut = rows / 2 / TILE * TILE;
        let (o0, o1) = out.split_at(Axis(0), cut);
        let (x0, x1) = x.split_at(Axis(0), cut);
        rayon::join(|| tiles(o0, x0, &f), || tiles(o1, x1, &f));
    } else {
        tiles(out, x, &f);
    }
}

/// From this many elements `zip_tiled` runs on two threads: Q(W) goes gate block by gate
/// block (word2's 650 × 650 and char's 512 × 512 split, word1's 300 × 300 and MNIST's
/// 100 × 100 do not), the latent gradient's pass over the whole W (from word1's 1200 × 300 up).
const PARALLEL_MIN: usize = 1 << 18;

/// `zip_tiled` on one thread.
fn tiles<T, U>(mut out: ArrayViewMut2<T>, x: ArrayView2<U>, f: &impl Fn(&mut T, &U)) {
    let (rows, cols) = out.dim();
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            Zip::from(out.slice_mut(s![r0..r1, c0..c1])).and(x.slice(s![r0..r1, c0..c1])).for_each(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn tiles_cover_every_element_of_a_transposed_pair() {
        // two threads (the global setting; every path gives the same values on any count): the
        // last shape is split between them, at a row that is not the middle one
        crate::tensor::set_threads(2);
        for (r, c) in [(1, 1), (31, 33), (64, 32), (70, 5), (100, 400), (650, 700)] {
            let w = Array2::from_shape_fn((r, c), |(i, j)| (i * 1000 + j) as f64);
            let mut out_t = Array2::<f64>::zeros((c, r));
            zip_tiled(out_t.view_mut().reversed_axes(), w.view(), |o, &v| *o = v + 0.5);
            assert_eq!(out_t, w.t().mapv(|v| v + 0.5));
        }
    }
}
