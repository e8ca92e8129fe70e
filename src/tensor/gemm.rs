//! One GEMM entry point over ndarray views (faer underneath; window-sized f32 products on our
//! own kernel, `panel_gemm::window_product`, with faer's bits), the thread count it may use,
//! and the flush-to-zero setting every compute thread gets.

use std::sync::atomic::{AtomicUsize, Ordering};

use faer::{Accum, MatMut, MatRef, Par};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::tensor::Real;

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Set the number of threads GEMMs may use (the rayon pool is built once, on first call),
/// and flush denormals to zero on this thread and the pool's.
pub fn set_threads(n: usize) {
    let n = n.max(1);
    THREADS.store(n, Ordering::Relaxed);
    flush_denormals();
    // A second call (tests, benches) keeps the first pool; ignore its error.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).start_handler(|_| flush_denormals()).build_global();
}

/// Treat denormal floats as zero (x86 MXCSR FTZ and DAZ), as deep-learning libraries do:
/// vanishing gradients otherwise fill GEMMs with denormals, which the CPU computes up to
/// 100× slower. Values below 1.2e-38 (f32) carry nothing a trainer could use.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: setting MXCSR's FTZ (bit 15) and DAZ (bit 6) only changes how this thread rounds
    // subnormal results and operands.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// Below this many multiply-adds a GEMM runs on one thread: splitting small per-step products
/// across threads costs more in synchronisation than it saves. Measured on 2 cores
/// (examples/gemm_shapes.rs): 20×300·300×1200 (7M) and 100×100·100×400 (4M) run faster on one
/// thread, 20×650·650×2600 (34M) and 64×512·512×2048 (67M) on two.
const PARALLEL_MIN_MACS: usize = 1 << 24;

/// c = alpha · a · b, or c += alpha · a · b when `accumulate`. Any strides (transposed views
/// included) are passed to faer as they are, without copies. Large products use all threads.
pub fn gemm<T: Real>(c: ArrayViewMut2<T>, accumulate: bool, a: ArrayView2<T>, b: ArrayView2<T>, alpha: T) {
    gemm_with(c, accumulate, a, b, alpha, true)
}

/// `gemm`, on one thread unless `parallel` (for callers that already split work across threads).
pub fn gemm_with<T: Real>(
    c: ArrayViewMut2<T>,
    accumulate: bool,
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    alpha: T,
    parallel: bool,
) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "gemm: inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "gemm: output shape");
    if m == 0 || n == 0 {
        return;
    }
    let mut c = c;
    if k == 0 {
        if !accumulate {
            c.fill(T::zero());
        }
        return;
    }
    let t = threads();
    if splits_k(m, k, n, parallel) {
        return gemm_split_k(c, accumulate, a, b, alpha, t);
    }
    let split = parallel && t > 1 && m * n * k >= PARALLEL_MIN_MACS;
    if super::panel_gemm::window_applies(&c, &a, &b, alpha) {
        // our cache-blocked kernel on faer's arithmetic: the same bits, faster on window shapes
        return super::panel_gemm::window_product(c, accumulate, a, b, split);
    }
    faer_product(c, accumulate, a, b, alpha, if split { Par::rayon(t) } else { Par::Seq })
}

/// Whether `gemm_with` splits this product's depth over the threads (few outputs, a long k).
fn splits_k(m: usize, k: usize, n: usize, parallel: bool) -> bool {
    parallel && threads() > 1 && m * n * k >= PARALLEL_MIN_MACS && k >= 8 * (m + n) && m * n <= 1 << 18
}

/// Whether `gemm_with(c, _, a, b, 1, parallel)`, C in standard layout, runs the whole product on
/// our window kernel (`panel_gemm::window_product`): each output one chain of fused
/// multiply-adds over k in faer's depth blocks. Two products whose outputs are the same sums,
/// one the transpose of the other (Xᵀ·dZ and dZᵀ·X), give the same bits when both do: a fused
/// multiply-add's two factors commute.
pub fn runs_window_kernel<T: Real>(a: ArrayView2<T>, b: ArrayView2<T>, parallel: bool) -> bool {
    let ((m, k), n) = (a.dim(), b.ncols());
    m > 0 && n > 0 && k > 0 && !splits_k(m, k, n, parallel) && super::panel_gemm::window_takes(&a, &b)
}

/// c (+)= alpha · a · b by faer, any strides: what `gemm` computes, bit for bit, without our
/// kernels (the reference they are tested and timed against).
pub fn faer_product<T: Real>(
    mut c: ArrayViewMut2<T>,
    accumulate: bool,
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    alpha: T,
    par: Par,
) {
    let ((m, k), n) = (a.dim(), b.ncols());
    let (as_, bs) = (a.strides(), b.strides());
    let cs = [c.strides()[0], c.strides()[1]];
    // SAFETY: the views are valid for their shapes and strides for the duration of the call,
    // and `c` is borrowed mutably so it cannot alias `a` or `b`.
    unsafe {
        let ar = MatRef::from_raw_parts(a.as_ptr(), m, k, as_[0], as_[1]);
        let br = MatRef::from_raw_parts(b.as_ptr(), k, n, bs[0], bs[1]);
        let cm = MatMut::from_raw_parts_mut(c.as_mut_ptr(), m, n, cs[0], cs[1]);
        let acc = if accumulate { Accum::Add } else { Accum::Replace };
        faer::linalg::matmul::matmul(cm, acc, ar, br, alpha, par);
    }
}

/// A small output with a long inner dimension (a weight gradient summed over a long window,
/// e.g. sequential MNIST's 100×78400·78400×400): faer's split of the output leaves threads
/// idle, so each thread sums its share of k into its own buffer and the buffers are added.
/// One (m, n) buffer per thread per call: these products run once per window.
fn gemm_split_k<T: Real>(
    mut c: ArrayViewMut2<T>,
    accumulate: bool,
    a: ArrayView2<T>,
    b: ArrayView2<T>,
    alpha: T,
    t: usize,
) {
    use rayon::prelude::*;
    let (m, k) = a.dim();
    let n = b.ncols();
    let chunk = k.div_ceil(t);
    let parts: Vec<Array2<T>> = (0..t)
        .into_par_iter()
        .map(|i| {
            let (k0, k1) = (i * chunk, ((i + 1) * chunk).min(k));
            let mut part = Array2::zeros((m, n));
            gemm_with(
                part.view_mut(),
                false,
                a.slice(ndarray::s![.., k0..k1]),
                b.slice(ndarray::s![k0..k1, ..]),
                alpha,
                false,
            );
            part
        })
        .collect();
    if !accumulate {
        c.fill(T::zero());
    }
    for p in parts {
        c += &p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn split_k_gemm_matches_the_plain_one() {
        set_threads(2);
        // 40×20000·20000×30: long inner dimension, small output → the k-split path
        let a = Array2::from_shape_fn((20000, 40), |(i, j)| ((i * 7 + j * 3) % 11) as f64 - 5.0);
        let b = Array2::from_shape_fn((20000, 30), |(i, j)| ((i * 5 + j) % 13) as f64 - 6.0);
        let mut c = Array2::<f64>::ones((40, 30));
        gemm(c.view_mut(), true, a.t(), b.view(), 0.5);
        let want = a.t().dot(&b) * 0.5 + 1.0;
        assert_eq!(c, want, "integer-valued inputs: exact in f64 whatever the summation order");
    }

    #[test]
    fn gemm_matches_naive_with_transposed_views() {
        let a = array![[1.0f64, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let b = array![[1.0f64, -1.0], [0.5, 2.0], [-2.0, 1.0]];
        let mut c = Array2::<f64>::ones((2, 2));
        gemm(c.view_mut(), true, a.view(), b.view(), 2.0);
        let want = a.dot(&b) * 2.0 + 1.0;
        assert_eq!(c, want);
        // aᵀ·aᵀᵀ through strides only
        let mut d = Array2::<f64>::zeros((3, 3));
        gemm(d.view_mut(), false, a.t(), a.view(), 1.0);
        assert_eq!(d, a.t().dot(&a));
    }
}
