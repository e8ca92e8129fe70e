//! The scalar trait every layer is generic over (f32 for training, f64 for the gradient
//! checks), with f32 versions of e^x and tanh that vectorize.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use ndarray::{LinalgScalar, ScalarOperand};
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
    // 2^n from n's bits: n is a whole number in [−126, 127], so 1.5·2^23 + n is exact and its
    // low mantissa bits are n + 2^22. (`n as i32` is the same integer, but Rust's saturating
    // float-to-int conversion does not vectorize: LLVM scalarized it, lane by lane, in every
    // loop over expf.)
    let n_int = (n + 12_582_912.0).to_bits().wrapping_sub(0x4b40_0000);
    y * f32::from_bits(n_int.wrapping_add(127) << 23)
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
#[cfg(test)]
mod tests {
    use super::*;

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
    }

    /// expf's 2^n through n's bits gives the saturating conversion's numbers bit for bit: every
    /// n, and expf itself on a dense sweep of f32 (every 97th bit pattern) and the edges.
    #[test]
    fn expf_by_exponent_bits_equals_the_conversion() {
        for n in -126..=127 {
            let f = n as f32;
            let by_bits = (f + 12_582_912.0).to_bits().wrapping_sub(0x4b40_0000).wrapping_add(127) << 23;
            assert_eq!(by_bits, ((f as i32 + 127) << 23) as u32, "n = {n}");
        }
        let by_conversion = |x: f32| {
            let x = x.clamp(-87.3, 88.0);
            let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
            let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
            let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
                + 0.166_666_65)
                * r
                + 0.5;
            let y = p * r * r + r + 1.0;
            y * f32::from_bits(((n as i32 + 127) << 23) as u32)
        };
        let edges = [0.0f32, -0.0, 88.0, 88.1, -87.3, -87.4, f32::MAX, f32::MIN, f32::INFINITY, f32::NEG_INFINITY];
        for x in (0..u32::MAX).step_by(97).map(f32::from_bits).chain(edges) {
            let (a, b) = (expf(x), by_conversion(x));
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "expf({x:e}): {a:e} vs {b:e}");
        }
        assert!(tanhf(50.0) == 1.0 && tanhf(-50.0) == -1.0 && tanhf(0.0) == 0.0);
    }
}
