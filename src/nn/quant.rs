//! The seven quantizers of docs/SPEC.md §2 as pure functions on one gate block (H × in) of latent
//! weights. Each of the 8 blocks of a layer has its own scale and threshold. The backward is
//! the straight-through estimator: ∂L/∂W = ∂L/∂Q(W), applied by the caller.
//! Sums run in f64 so that scales and thresholds are exact to the last bit we can test.

use ndarray::{ArrayView2, ArrayViewMut2, Zip};

use crate::names::named_enum;
use crate::tensor::{Real, zip_tiled};

named_enum! {
    /// How the recurrent layers' weights are quantized (docs/SPEC.md §2).
    pub enum Quantizer {
        Fp = "fp",
        Bc = "bc",
        Bwn = "bwn",
        Lab = "lab",
        Tc = "tc",
        Twn = "twn",
        Lat = "lat",
    }
}

impl Quantizer {
    /// Bits per stored weight (docs/SPEC.md §4).
    pub fn bits(self) -> u32 {
        match self {
            Quantizer::Fp => 32,
            Quantizer::Bc | Quantizer::Bwn | Quantizer::Lab => 1,
            Quantizer::Tc | Quantizer::Twn | Quantizer::Lat => 2,
        }
    }

    /// Loss-aware quantizers weight each entry by the optimizer's curvature estimate.
    pub fn uses_curvature(self) -> bool {
        matches!(self, Quantizer::Lab | Quantizer::Lat)
    }
}

/// sign with sign(0) = 0, as `torch.sign` in the reference code (docs/SPEC.md §2): sequential
/// MNIST's identity block must stay the identity under bc/bwn/lab, not become all ones.
#[inline]
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Write Q(w) into `out` (same shape as `w`). `d` is the loss-aware curvature
/// sqrt(v) + 1e-8 for lab/lat (None: d = 1).
pub fn quantize_block<T: Real>(q: Quantizer, w: ArrayView2<T>, d: Option<ArrayView2<T>>, out: ArrayViewMut2<T>) {
    let n = w.len() as f64;
    let mean_abs = || w.iter().map(|x| x.f64().abs()).sum::<f64>() / n;
    let dw = |x: T, d: T| (x.f64(), d.f64());
    match q {
        Quantizer::Fp => zip_tiled(out, w, |o, &x| *o = x),
        Quantizer::Bc => zip_tiled(out, w, |o, &x| *o = T::r(sign(x.f64()))),
        Quantizer::Bwn => {
            let alpha = mean_abs();
            zip_tiled(out, w, |o, &x| *o = T::r(alpha * sign(x.f64())));
        }
        Quantizer::Lab => {
            // α = Σ d⊙|w| / Σ d
            let (mut num, mut den) = (0.0, 0.0);
            for_each_d(w, d, |x, d| {
                let (x, d) = dw(x, d);
                num += d * x.abs();
                den += d;
            });
            let alpha = num / den;
            zip_tiled(out, w, |o, &x| *o = T::r(alpha * sign(x.f64())));
        }
        Quantizer::Tc => {
            let delta = 0.7 * mean_abs();
            zip_tiled(out, w, |o, &x| *o = T::r(ternary(x.f64(), delta)));
        }
        Quantizer::Twn => {
            let delta = 0.7 * mean_abs();
            let (mut sum, mut count) = (0.0, 0usize);
            for &x in w.iter() {
                if x.f64().abs() > delta {
                    sum += x.f64().abs();
                    count += 1;
                }
            }
            let alpha = if count > 0 { sum / count as f64 } else { 0.0 };
            zip_tiled(out, w, |o, &x| *o = T::r(alpha * ternary(x.f64(), delta)));
        }
        Quantizer::Lat => {
            let (alpha, _) = lat_fixed_point(w, d);
            zip_tiled(out, w, |o, &x| *o = T::r(alpha * ternary(x.f64(), alpha / 2.0)));
        }
    }
}

/// +1 above Δ, −1 below −Δ, else 0 (ties at ±Δ go to 0).
#[inline]
fn ternary(x: f64, delta: f64) -> f64 {
    if x > delta {
        1.0
    } else if x < -delta {
        -1.0
    } else {
        0.0
    }
}

fn for_each_d<T: Real>(w: ArrayView2<T>, d: Option<ArrayView2<T>>, mut f: impl FnMut(T, T)) {
    match d {
        Some(d) => Zip::from(&w).and(&d).for_each(|&x, &d| f(x, d)),
        None => w.iter().for_each(|&x| f(x, T::one())),
    }
}

/// Loss-aware ternarization: b = sign(w) (sign(0) = 0); repeat { α = Σ d|w||b| / Σ d|b|;
/// b = 1[w > α/2] − 1[w < −α/2] } until α changes by ≤ 1e-6, at most 100 times.
/// Returns (α, iterations). An all-zero b gives α = 0.
pub fn lat_fixed_point<T: Real>(w: ArrayView2<T>, d: Option<ArrayView2<T>>) -> (f64, usize) {
    let mut threshold: Option<f64> = None; // None: b = sign(w)
    let mut alpha_prev = f64::NAN;
    for iter in 1..=100 {
        let (mut num, mut den) = (0.0, 0.0);
        for_each_d(w, d, |x, d| {
            let (x, d) = (x.f64(), d.f64());
            let b = match threshold {
                None => sign(x),
                Some(th) => ternary(x, th),
            };
            num += d * x.abs() * b.abs();
            den += d * b.abs();
        });
        let alpha = if den > 0.0 { num / den } else { 0.0 };
        if (alpha - alpha_prev).abs() <= 1e-6 || alpha == 0.0 {
            return (alpha, iter);
        }
        alpha_prev = alpha;
        threshold = Some(alpha / 2.0);
    }
    (alpha_prev, 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    fn q(qz: Quantizer, w: &Array2<f64>, d: Option<&Array2<f64>>) -> Array2<f64> {
        let mut out = Array2::zeros(w.dim());
        quantize_block(qz, w.view(), d.map(|d| d.view()), out.view_mut());
        out
    }

    #[test]
    fn binary_quantizers_by_hand() {
        let w = array![[0.5, -0.25], [0.0, -1.25]];
        assert_eq!(q(Quantizer::Fp, &w, None), w);
        // sign(0) = 0: the exactly-zero weight stays 0
        assert_eq!(q(Quantizer::Bc, &w, None), array![[1.0, -1.0], [0.0, -1.0]]);
        // α = (0.5 + 0.25 + 0 + 1.25)/4 = 0.5
        assert_eq!(q(Quantizer::Bwn, &w, None), array![[0.5, -0.5], [0.0, -0.5]]);
        // lab with d = 1 is bwn
        assert_eq!(q(Quantizer::Lab, &w, None), q(Quantizer::Bwn, &w, None));
        // non-uniform d: α = (1·0.5 + 3·0.25 + 0 + 4·1.25) / (1+3+2+4) = 6.25/10
        let d = array![[1.0, 3.0], [2.0, 4.0]];
        assert_eq!(q(Quantizer::Lab, &w, Some(&d)), array![[0.625, -0.625], [0.0, -0.625]]);
        // all-zero block: all zero, α = 0
        let z = Array2::<f64>::zeros((2, 2));
        assert_eq!(q(Quantizer::Bc, &z, None), z);
        assert_eq!(q(Quantizer::Bwn, &z, None), z);
        // the identity stays the identity (sequential MNIST's candidate block of W_h)
        let eye = Array2::<f64>::eye(3);
        assert_eq!(q(Quantizer::Bc, &eye, None), eye);
        assert_eq!(q(Quantizer::Bwn, &eye, None), eye.mapv(|x| x / 3.0));
        assert_eq!(q(Quantizer::Lab, &eye, None), eye.mapv(|x| x / 3.0));
    }

    #[test]
    fn ternary_quantizers_by_hand() {
        // mean|w| = 0.5 and Δ = 0.7·0.5 computed in f64 equal |w[0][1]| to the last bit (found
        // by search), so the tie at the threshold is tested exactly: it goes to 0.
        let w = array![[0.05, -(7.0 * 0.05)], [23.0 * 0.05, 9.0 * 0.05]];
        let delta = 0.7 * (w.iter().map(|x: &f64| x.abs()).sum::<f64>() / 4.0);
        assert_eq!(delta, 7.0 * 0.05);
        assert_eq!(q(Quantizer::Tc, &w, None), array![[0.0, 0.0], [1.0, 1.0]]);
        // twn: α = mean(|w| > Δ) = (1.15 + 0.45)/2
        let alpha = (23.0 * 0.05 + 9.0 * 0.05) / 2.0;
        assert_eq!(q(Quantizer::Twn, &w, None), array![[0.0, 0.0], [alpha, alpha]]);
        let z = Array2::<f64>::zeros((1, 3));
        assert_eq!(q(Quantizer::Tc, &z, None), z);
        assert_eq!(q(Quantizer::Twn, &z, None), z);
        assert_eq!(q(Quantizer::Lat, &z, None), z);
    }

    #[test]
    fn lat_starts_from_sign_with_zeros_left_out() {
        // b = sign(w) = [1, 0, -1, 0]: α1 = (0.6 + 0.2)/2 = 0.4; threshold 0.2 keeps 0.6 only
        // (0.2 is not > 0.2): α2 = 0.6; threshold 0.3: same b → α3 = 0.6: stop.
        let w = array![[0.6, 0.0], [-0.2, 0.0]];
        let (alpha, iters) = lat_fixed_point(w.view(), None);
        assert!((alpha - 0.6).abs() < 1e-15 && iters == 3, "{alpha} {iters}");
        // with sign(0) = +1 the zeros would have entered α1: (0.6 + 0.2)/4 = 0.2
        let eye = Array2::<f64>::eye(4);
        assert_eq!(lat_fixed_point(eye.view(), None).0, 1.0);
        assert_eq!(q(Quantizer::Lat, &eye, None), eye);
    }

    #[test]
    fn lat_reaches_its_fixed_point() {
        // b = sign: α1 = (1+0.35+0.2+0.45)/4 = 0.5; b1 = [1,0,0,-1] (|w| > 0.25 except 0.2,
        // and 0.35 > 0.25 → -1): b1 = [1,-1,0,-1]; α2 = (1+0.35+0.45)/3 = 0.6; threshold 0.3:
        // same b → α3 = 0.6 = α2: stop. Result 0.6·[1,-1,0,-1].
        let w = array![[1.0, -0.35], [0.2, -0.45]];
        let (alpha, iters) = lat_fixed_point(w.view(), None);
        assert!((alpha - 0.6).abs() < 1e-15 && iters == 3, "{alpha} {iters}");
        let out = q(Quantizer::Lat, &w, None);
        assert_eq!(out, array![[alpha, -alpha], [0.0, -alpha]]);
        // At the fixed point α is the d-weighted mean of |w| over the kept entries and every
        // kept |w| exceeds α/2: check with a non-uniform d.
        let d = array![[0.1, 5.0], [1.0, 1.0]];
        let (alpha, _) = lat_fixed_point(w.view(), Some(d.view()));
        let kept: Vec<(f64, f64)> =
            w.iter().zip(d.iter()).filter(|(x, _)| x.abs() > alpha / 2.0).map(|(x, d)| (x.abs(), *d)).collect();
        let mean = kept.iter().map(|(x, d)| x * d).sum::<f64>() / kept.iter().map(|(_, d)| d).sum::<f64>();
        assert!((alpha - mean).abs() <= 1e-6, "{alpha} vs {mean}");
    }
}
