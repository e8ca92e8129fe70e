//! Element-wise passes between a matrix and a transposed one (the effective weights are kept
//! as Wᵀ for the products, the latent ones as W), in 32 × 32 tiles, each tile of the operand
//! laid out the other way first copied into a buffer in the other's order (`stage`), so that
//! both are then read and written along their contiguous runs. Element by element across the
//! two orders, the strided side touched a line per element, and where rows lie 4 KB-multiples
//! apart (W_h of PTB-char: 8 KB) a tile's 32 lines share one L1 set: 3 ns an element on char's
//! W_h, against 0.4–0.5 ns staged (`examples/tiled_pass.rs`).

use ndarray::{ArrayView2, ArrayViewMut2, Axis, Zip, s};

/// Tile side, in elements.
const TILE: usize = 32;

/// f(out[i, j], x[i, j]) for every element (same shape), tile by tile; the rows split between
/// two threads when there are two and the matrix is large (an element-wise pass: the same
/// values on any thread count).
pub fn zip_tiled<T: Send, U: Sync + Copy>(out: ArrayViewMut2<T>, x: ArrayView2<U>, f: impl Fn(&mut T, &U) + Sync) {
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

/// `zip_tiled` on one thread. Where `out` and `x` run along different axes (one of them a
/// transposed view), each tile of `x` is first copied into `out`'s order in a buffer that
/// stays in L1, so that `f` then runs along contiguous rows of both (Q(W) into Wᵀ, one at a
/// time, was 2.9 % of a one-thread word2 step on AMD Zen 4).
fn tiles<T, U: Copy>(out: ArrayViewMut2<T>, x: ArrayView2<U>, f: &impl Fn(&mut T, &U)) {
    // out's contiguous axis as its rows (a transposed pair of views holds the same elements)
    let (mut out, x) = if out.strides()[0] == 1 && out.strides()[1] != 1 && out.ncols() > 1 {
        (out.reversed_axes(), x.reversed_axes())
    } else {
        (out, x)
    };
    let (rows, cols) = out.dim();
    let staged = out.strides()[1] == 1 && x.strides()[0] == 1 && x.strides()[1] > 1 && x.nrows() > 1;
    let mut buf: Vec<U> = Vec::with_capacity(if staged { TILE * TILE } else { 0 });
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            let (mut o, xt) = (out.slice_mut(s![r0..r1, c0..c1]), x.slice(s![r0..r1, c0..c1]));
            if !staged {
                Zip::from(o).and(xt).for_each(f);
                continue;
            }
            stage(xt, &mut buf);
            let buf_rows = ndarray::ArrayView2::from_shape(xt.dim(), &buf[..]).expect("a tile");
            Zip::from(o.view_mut()).and(buf_rows).for_each(f);
        }
    }
}

/// A tile of x (h × w ≤ TILE × TILE, its columns contiguous) row-major into `buf`: for 4-byte
/// elements 16 × 16 (AVX-512) or 8 × 8 (AVX2) blocks at a time through register transposes,
/// which move bits and so suit any 4-byte `Copy` type; else one element at a time.
fn stage<U: Copy>(xt: ArrayView2<U>, buf: &mut Vec<U>) {
    let (h, w) = xt.dim();
    // every element is written below: only a new length needs filling (a partial tile's)
    buf.resize(h * w, xt[[0, 0]]);
    let cs = xt.strides()[1] as usize;
    #[cfg(target_arch = "x86_64")]
    if size_of::<U>() == 4 {
        let (src, dst) = (xt.as_ptr().cast::<f32>(), buf.as_mut_ptr().cast::<f32>());
        let blocks: Option<(usize, BlockCopy)> = match crate::tensor::simd() {
            crate::tensor::Simd::Avx512 => Some((16, crate::tensor::transpose_runs16)),
            crate::tensor::Simd::Avx2 => Some((8, crate::tensor::transpose_runs8)),
            crate::tensor::Simd::Base => None,
        };
        if let Some((n, block)) = blocks {
            // SAFETY: simd() found the copy's features; column j of the tile is the run
            // src[j·cs .. j·cs + h], buf holds h·w elements of 4 bytes.
            return unsafe { stage_blocks(src, cs, h, w, dst, n, block) };
        }
    }
    for (j, col) in xt.columns().into_iter().enumerate() {
        let col = col.to_slice().expect("a unit row stride");
        for (i, &v) in col.iter().enumerate() {
            buf[i * w + j] = v;
        }
    }
}

/// A block copy of `stage`'s: `transpose_runs16` or `transpose_runs8` (source runs, their
/// stride, depths, columns, destination, its row stride, padding).
#[cfg(target_arch = "x86_64")]
type BlockCopy = unsafe fn(*const f32, usize, usize, usize, *mut f32, usize, bool);

/// `stage` in n × n blocks through `block`, masked only at the tile's edges.
///
/// # Safety
/// The CPU has `block`'s features; column j < w of the tile is the run src[j·cs .. j·cs + h],
/// and dst holds h·w floats.
#[cfg(target_arch = "x86_64")]
unsafe fn stage_blocks(src: *const f32, cs: usize, h: usize, w: usize, dst: *mut f32, n: usize, block: BlockCopy) {
    for j0 in (0..w).step_by(n) {
        for i0 in (0..h).step_by(n) {
            let (depths, cols) = ((h - i0).min(n), (w - j0).min(n));
            // SAFETY: columns j0 .. j0 + cols ≤ w, rows i0 .. i0 + depths ≤ h of the tile, and
            // the same rows and columns of the h × w buffer.
            unsafe { block(src.add(j0 * cs + i0), cs, depths, cols, dst.add(i0 * w + j0), w, false) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Every copy of `stage` this CPU runs (the AVX2 one also where the dispatcher picks
    /// AVX-512) puts each element where the scalar loop does, on whole and partial tiles.
    #[test]
    fn every_stage_copy_puts_each_element_where_the_scalar_one_does() {
        let x = Array2::from_shape_fn((40, 50), |(i, j)| (i * 100 + j) as f32);
        for (h, w) in [(32, 32), (17, 9), (1, 32), (32, 1), (16, 16), (5, 31)] {
            // a tile whose columns are contiguous runs: the transposed view's (h, w) corner
            let xt = x.t();
            let xt = xt.slice(s![3..3 + h, 2..2 + w]);
            let want = Array2::from_shape_fn((h, w), |(i, j)| xt[[i, j]]);
            let mut buf = Vec::new();
            stage(xt, &mut buf);
            assert_eq!(buf, want.as_slice().unwrap(), "dispatched copy, {h} × {w}");
            #[cfg(target_arch = "x86_64")]
            {
                let copies: [(crate::tensor::Simd, usize, BlockCopy); 2] = [
                    (crate::tensor::Simd::Avx512, 16, crate::tensor::transpose_runs16),
                    (crate::tensor::Simd::Avx2, 8, crate::tensor::transpose_runs8),
                ];
                for (needs, n, block) in copies {
                    if crate::tensor::simd() < needs {
                        continue;
                    }
                    let mut got = vec![f32::NAN; h * w];
                    // SAFETY: simd() found the copy's features; the tile's columns are runs
                    // of h floats xt.strides()[1] apart, got holds h·w floats.
                    unsafe { stage_blocks(xt.as_ptr(), xt.strides()[1] as usize, h, w, got.as_mut_ptr(), n, block) };
                    assert_eq!(got, want.as_slice().unwrap(), "{needs:?} copy, {h} × {w}");
                }
            }
        }
    }

    /// Both directions (into a transposed view, and from one into a row-major matrix), in f64
    /// (elements one at a time) and f32 (register transposes on AVX2 and AVX-512 hosts), on
    /// shapes with partial tiles and partial 16 × 16 blocks.
    #[test]
    fn tiles_cover_every_element_of_a_transposed_pair() {
        // two threads (the global setting; every path gives the same values on any count): the
        // last shape is split between them, at a row that is not the middle one
        crate::tensor::set_threads(2);
        for (r, c) in [(1, 1), (1, 40), (40, 1), (31, 33), (64, 32), (70, 5), (17, 9), (100, 400), (650, 700)] {
            let w = Array2::from_shape_fn((r, c), |(i, j)| (i * 1000 + j) as f64);
            let mut out_t = Array2::<f64>::zeros((c, r));
            zip_tiled(out_t.view_mut().reversed_axes(), w.view(), |o, &v| *o = v + 0.5);
            assert_eq!(out_t, w.t().mapv(|v| v + 0.5), "f64 into Wᵀ, {r} × {c}");
            let mut acc = Array2::<f64>::ones((r, c));
            zip_tiled(acc.view_mut(), out_t.t(), |a, &v| *a += v);
            assert_eq!(acc, w.mapv(|v| v + 1.5), "f64 from Wᵀ, {r} × {c}");

            let w = w.mapv(|v| v as f32);
            let mut out_t = Array2::<f32>::zeros((c, r));
            zip_tiled(out_t.view_mut().reversed_axes(), w.view(), |o, &v| *o = -v);
            assert_eq!(out_t, w.t().mapv(|v| -v), "f32 into Wᵀ, {r} × {c}");
            let mut acc = Array2::<f32>::ones((r, c));
            zip_tiled(acc.view_mut(), out_t.t(), |a, &v| *a -= v);
            assert_eq!(acc, w.mapv(|v| v + 1.0), "f32 from Wᵀ, {r} × {c}");
        }
    }
}
