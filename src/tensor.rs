//! The numeric foundation: the scalar trait every layer is generic over (f32 for training,
//! f64 for gradient checks), one GEMM entry point, and trained parameters.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};
use std::sync::atomic::{AtomicUsize, Ordering};

use faer::{Accum, MatMut, MatRef, Par};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive};

/// A real scalar the engine can run in. Training uses f32; the gradient checks run the very
/// same code in f64 so that central differences are exact to ~1e-7.
pub trait Real:
    Float
    + LinalgScalar
    + ScalarOperand
    + FromPrimitive
    + faer::traits::ComplexField
    + faer::traits::Conjugate<Canonical = Self>
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Send
    + Sync
    + Debug
    + Display
    + Default
    + 'static
{
    /// Convert from f64 (literals, hyper-parameters).
    fn r(x: f64) -> Self {
        <Self as FromPrimitive>::from_f64(x).unwrap()
    }
    fn f64(self) -> f64 {
        num_traits::ToPrimitive::to_f64(&self).unwrap()
    }
    /// σ(x) = 1/(1 + e^−x). f32 uses a polynomial e^x that vectorizes (≤ 2 ulp); f64 (the
    /// gradient checks) uses the library's.
    #[inline(always)]
    fn sigmoid(self) -> Self {
        Self::one() / (Self::one() + (-self).exp())
    }
    /// tanh(x), vectorizable for f32 like `sigmoid`.
    #[inline(always)]
    fn tanh_fast(self) -> Self {
        self.tanh()
    }
    /// e^x, vectorizable for f32 like `sigmoid`.
    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }
}

impl Real for f32 {
    #[inline(always)]
    fn sigmoid(self) -> f32 {
        1.0 / (1.0 + expf(-self))
    }
    #[inline(always)]
    fn tanh_fast(self) -> f32 {
        tanhf(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        expf(self)
    }
}
impl Real for f64 {}

/// Independent accumulators of the lane-wise reductions below: a single float accumulator
/// forbids the reordering that vectorization needs, 16 of them let it happen (two AVX2
/// registers of f32).
const LANES: usize = 16;

/// Σ f(x) over a slice in `LANES` independent accumulators (then added in order), so that
/// the loop vectorizes; the reductions below are this with their own `f`.
#[inline(always)]
fn lane_sum<T: Copy, A: Copy + std::ops::Add<Output = A> + std::ops::AddAssign + std::iter::Sum>(
    x: &[T],
    zero: A,
    f: impl Fn(T) -> A,
) -> A {
    let mut acc = [zero; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().copied().sum::<A>() + rest.iter().map(|&v| f(v)).sum::<A>()
}

/// Σ x² of a slice, vectorizable.
#[inline(always)]
pub fn sum_sq<T: Real>(x: &[T]) -> T {
    lane_sum(x, T::zero(), |v| v * v)
}

/// Σ x² of a slice accumulated in f64, vectorizable: for norms of gradients, whose squares can
/// overflow f32 while the gradients themselves are finite (plain bc at H = 512 reaches 1e20
/// at step 0; PyTorch's CPU norm accumulates f32 in double too).
#[inline(always)]
pub fn sum_sq_f64<T: Real>(x: &[T]) -> f64 {
    lane_sum(x, 0.0f64, |v| v.f64() * v.f64())
}

/// Σ x of a slice, vectorizable.
#[inline(always)]
pub fn sum<T: Real>(x: &[T]) -> T {
    lane_sum(x, T::zero(), |v| v)
}

/// Σ (x − m)² of a slice, vectorizable.
#[inline(always)]
pub fn sum_sq_dev<T: Real>(x: &[T], m: T) -> T {
    lane_sum(x, T::zero(), |v| (v - m) * (v - m))
}

/// max of a non-empty slice, vectorizable.
#[inline(always)]
pub fn max<T: Real>(x: &[T]) -> T {
    let mut acc = [x[0]; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().chain(rest).copied().fold(x[0], |m, v| if v > m { v } else { m })
}

/// x ← e^(x − m) in place, returning Σ e^(x − m); vectorizable.
#[inline(always)]
pub fn exp_shift_sum<T: Real>(x: &mut [T], m: T) -> T {
    let mut acc = [T::zero(); LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = (c[l] - m).exp_fast();
            acc[l] += c[l];
        }
    }
    let mut s = acc.iter().copied().sum::<T>();
    for v in chunks.into_remainder() {
        *v = (*v - m).exp_fast();
        s += *v;
    }
    s
}

/// e^x for f32: Cephes' expf (range reduction by ln 2 split in two parts, degree-5 polynomial,
/// 2^n through the exponent bits), written branch-free so loops over it vectorize.
/// Inputs are clamped to [−87.3, 88] (the normal range of f32).
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// tanh for f32: Cephes' odd polynomial below |x| = 0.625 (full relative accuracy near 0),
/// 1 − 2/(e^{2|x|} + 1) with the sign above; both computed and blended, so it vectorizes.
#[inline(always)]
pub fn tanhf(x: f32) -> f32 {
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_908_8e-2) * z - 5.373_971_6e-2) * z + 0.133_314_42) * z - 0.333_332_8) * z * x
            + x;
    let a = x.abs();
    let large = (1.0 - 2.0 / (expf(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 { small } else { large }
}

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

/// The widest vector extension of this CPU that the hot elementwise kernels are compiled for
/// (ordered: a level includes the ones before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// The build target's baseline (SSE2 on default x86-64).
    Base,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F + VL (with AVX2 and FMA).
    Avx512,
}

/// Detected once (`is_x86_feature_detected!` caches too, but several lookups per call add up
/// in the per-row cell kernels). The environment variable `QLSTM_SIMD` = `base`, `avx2` or
/// `avx512` caps it (to compare the compiled copies, or to rule one out when debugging).
#[inline]
pub fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("QLSTM_SIMD").as_deref() {
            Ok("base") => Simd::Base,
            Ok("avx2") => Simd::Avx2,
            _ => Simd::Avx512,
        };
        detected_simd().min(cap)
    })
}

fn detected_simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
            return Simd::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Simd::Avx2;
        }
    }
    Simd::Base
}

/// The hot elementwise kernels (cell, normalizations, softmax, Adam) are compiled three times
/// and chosen at run time: LLVM vectorizes a loop to the width of the features enabled on the
/// function it ends up in, and the default x86-64 target has neither AVX2 nor FMA (4 lanes).
/// `simd_kernel!` wraps a free generic function: its body becomes an `#[inline(always)]` inner
/// function, inlined into an AVX-512 and an AVX2 + FMA copy. Keep the slices a kernel loops
/// over among its arguments (or in a struct argument of slices): slices made inside from
/// ndarray views may alias as far as LLVM knows, and the loop stays scalar. (A closure cannot
/// be forced inline on stable Rust; passed to a `#[target_feature]` function it stayed a call
/// to baseline code, 2.3× slower on the MNIST cell.)
macro_rules! simd_kernel {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$T:ident: Real>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name<$T: Real>($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn imp<$T: Real>($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            unsafe fn avx512<$T: Real>($($a: $t),*) $(-> $r)? {
                imp($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<$T: Real>($($a: $t),*) $(-> $r)? {
                imp($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            match $crate::tensor::simd() {
                // SAFETY: `simd()` found the features these copies are compiled for.
                $crate::tensor::Simd::Avx512 => return unsafe { avx512($($a),*) },
                $crate::tensor::Simd::Avx2 => return unsafe { avx2($($a),*) },
                $crate::tensor::Simd::Base => {}
            }
            imp($($a),*)
        }
    };
}
pub(crate) use simd_kernel;

/// `simd_kernel!` for a method: `pub fn name(&mut self, args) => imp, avx512_copy, avx2_copy`
/// defines `name`, which calls the `#[inline(always)]` method `imp` through the copy for this
/// CPU (the copies are named because `macro_rules!` cannot make identifiers). The receiver and
/// `self` are passed on to the inner rule as tokens so that hygiene sees one `self`.
macro_rules! simd_method {
    ($(#[$m:meta])* $vis:vis fn $name:ident(&mut self $(, $a:ident: $t:ty)* $(,)?) $(-> $r:ty)? => $imp:ident, $v512:ident, $v256:ident) => {
        $crate::tensor::simd_method!(@gen [&mut self] self $(#[$m])* $vis $name ($($a: $t),*) ($($r)?) $imp $v512 $v256);
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident(&self $(, $a:ident: $t:ty)* $(,)?) $(-> $r:ty)? => $imp:ident, $v512:ident, $v256:ident) => {
        $crate::tensor::simd_method!(@gen [&self] self $(#[$m])* $vis $name ($($a: $t),*) ($($r)?) $imp $v512 $v256);
    };
    (@gen [$($recv:tt)*] $sf:tt $(#[$m:meta])* $vis:vis $name:ident ($($a:ident: $t:ty),*) ($($r:ty)?) $imp:ident $v512:ident $v256:ident) => {
        $(#[$m])*
        $vis fn $name($($recv)* $(, $a: $t)*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            match $crate::tensor::simd() {
                // SAFETY: `simd()` found the features these copies are compiled for.
                $crate::tensor::Simd::Avx512 => return unsafe { $sf.$v512($($a),*) },
                $crate::tensor::Simd::Avx2 => return unsafe { $sf.$v256($($a),*) },
                $crate::tensor::Simd::Base => {}
            }
            $sf.$imp($($a),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn $v512($($recv)* $(, $a: $t)*) $(-> $r)? {
            $sf.$imp($($a),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $v256($($recv)* $(, $a: $t)*) $(-> $r)? {
            $sf.$imp($($a),*)
        }
    };
}
pub(crate) use simd_method;

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
    if parallel && t > 1 && m * n * k >= PARALLEL_MIN_MACS && k >= 8 * (m + n) && m * n <= 1 << 18 {
        return gemm_split_k(c, accumulate, a, b, alpha, t);
    }
    let par = if parallel && t > 1 && m * n * k >= PARALLEL_MIN_MACS { Par::rayon(t) } else { Par::Seq };
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

/// Which optimizer group a parameter is in: the recipes treat the latent LSTM weights
/// (W_x, W_h of every layer) differently from everything else (lr scale, lr decay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    LatentWeight,
    Other,
}

/// A trained tensor with its gradient. Vectors are stored as 1×n so every parameter has one
/// shape type; names follow the checkpoint naming (`lstm.0.w_x`, `decoder.weight`, …).
#[derive(Clone, Debug)]
pub struct Param<T> {
    pub name: String,
    pub value: Array2<T>,
    pub grad: Array2<T>,
    pub group: Group,
}

impl<T: Real> Param<T> {
    pub fn new(name: impl Into<String>, value: Array2<T>, group: Group) -> Self {
        let grad = Array2::zeros(value.dim());
        Param { name: name.into(), value, grad, group }
    }
    pub fn zero_grad(&mut self) {
        self.grad.fill(T::zero());
    }
}

/// Resize a work buffer only when its shape changes (the last window of an epoch is shorter),
/// so steady-state training allocates nothing.
pub fn ensure_shape<T: Real>(a: &mut Array2<T>, rows: usize, cols: usize) {
    if a.dim() != (rows, cols) {
        *a = Array2::zeros((rows, cols));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn fast_f32_exp_sigmoid_tanh_are_accurate() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64);
        let mut x = -30.0f32;
        while x <= 30.0 {
            let e = (x as f64).exp();
            worst.0 = worst.0.max(((expf(x) as f64) - e).abs() / e);
            let s = 1.0 / (1.0 + (-x as f64).exp());
            worst.1 = worst.1.max((x.sigmoid() as f64 - s).abs() / s);
            let t = (x as f64).tanh();
            worst.2 = worst.2.max((tanhf(x) as f64 - t).abs() / t.abs().max(1e-30));
            x += 0.001_37;
        }
        // a few f32 ulps (ulp = 1.2e-7 relative)
        assert!(worst.0 < 4e-7 && worst.1 < 4e-7 && worst.2 < 4e-7, "{worst:?}");
        assert_eq!(expf(-200.0), expf(-87.3));
        assert!(tanhf(50.0) == 1.0 && tanhf(-50.0) == -1.0 && tanhf(0.0) == 0.0);
    }

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
