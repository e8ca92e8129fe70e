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
}
impl Real for f32 {}
impl Real for f64 {}

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Set the number of threads GEMMs may use (the rayon pool is built once, on first call).
pub fn set_threads(n: usize) {
    let n = n.max(1);
    THREADS.store(n, Ordering::Relaxed);
    // A second call (tests, benches) keeps the first pool; ignore its error.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
}

pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// Below this many multiply-adds a GEMM runs on one thread: splitting small per-step products
/// across threads costs more in synchronisation than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// c = alpha · a · b, or c += alpha · a · b when `accumulate`. Any strides (transposed views
/// included) are passed to faer as they are, without copies.
pub fn gemm<T: Real>(c: ArrayViewMut2<T>, accumulate: bool, a: ArrayView2<T>, b: ArrayView2<T>, alpha: T) {
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
    let par = if t > 1 && m * n * k >= PARALLEL_MIN_MACS { Par::rayon(t) } else { Par::Seq };
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
