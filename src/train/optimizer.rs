//! Adam (PyTorch semantics: bias-corrected, ε = 1e-8 added to √v̂) and plain SGD, with
//! per-group learning rates, and global-norm gradient clipping (its factor applied as the
//! update reads each gradient). Adam's moments live with the tensors they belong to
//! (`Param::moments`), so checkpoints and the loss-aware quantizers find them by the
//! parameter, not by an index.

use ndarray::Array2;

use crate::spec::Optimizer as Kind;
use crate::tensor::{Group, Moments, Param, Real, sum_sq_f64};

pub struct Optimizer {
    pub kind: Kind,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Optimizer steps taken.
    pub t: u64,
}

impl Optimizer {
    pub fn new(kind: Kind) -> Self {
        Optimizer { kind, beta1: 0.9, beta2: 0.999, eps: 1e-8, t: 0 }
    }

    /// One update from the gradients scaled by `clip.scale` (`clip_grad_norm`). Latent LSTM
    /// weights use `lr_latent`, everything else `lr_other`.
    pub fn step<T: Real>(&mut self, params: &mut [&mut Param<T>], clip: Clip, lr_latent: f64, lr_other: f64) {
        self.t += 1;
        let lr_of = |p: &Param<T>| if p.group == Group::LatentWeight { lr_latent } else { lr_other };
        // g·1 is g bit for bit: unclipped steps multiply by one rather than branch
        let grad_scale = T::r(clip.scale.unwrap_or(1.0));
        match self.kind {
            Kind::Sgd => {
                for p in params.iter_mut() {
                    let lr = T::r(lr_of(p));
                    let Param { value, grad, .. } = &mut **p;
                    value.zip_mut_with(grad, |w, &g| *w -= lr * (g * grad_scale));
                }
            }
            Kind::Adam => {
                let (b1, b2) = (T::r(self.beta1), T::r(self.beta2));
                let bc1 = 1.0 - self.beta1.powi(self.t as i32);
                let bc2 = 1.0 - self.beta2.powi(self.t as i32);
                let eps = T::r(self.eps);
                let sqrt_bc2 = T::r(bc2.sqrt());
                for p in params.iter_mut() {
                    let k = AdamConsts { b1, b2, step: T::r(lr_of(p) / bc1), sqrt_bc2, eps, grad_scale };
                    let Param { value, grad, moments, .. } = &mut **p;
                    let dim = value.dim();
                    let Moments { m, v } =
                        moments.get_or_insert_with(|| Moments { m: Array2::zeros(dim), v: Array2::zeros(dim) });
                    let (w, g) = (value.as_slice_mut().unwrap(), grad.as_slice().unwrap());
                    adam_dispatch(w, g, m.as_slice_mut().unwrap(), v.as_slice_mut().unwrap(), k);
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct AdamConsts<T> {
    b1: T,
    b2: T,
    step: T,
    sqrt_bc2: T,
    eps: T,
    /// The clip's factor (1 unclipped).
    grad_scale: T,
}

/// The update is memory-bound: large tensors are split across the threads.
fn adam_dispatch<T: Real>(w: &mut [T], g: &[T], m: &mut [T], v: &mut [T], k: AdamConsts<T>) {
    let t = crate::tensor::threads();
    if t > 1 && w.len() >= 1 << 16 {
        use rayon::prelude::*;
        let chunk = w.len().div_ceil(t);
        w.par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .for_each(|(((w, g), m), v)| adam_kernel(w, g, m, v, k));
    } else {
        adam_kernel(w, g, m, v, k)
    }
}

crate::tensor::simd_kernel! {
    fn adam_kernel<T: Real>(w: &mut [T], g: &[T], m: &mut [T], v: &mut [T], k: AdamConsts<T>) {
        adam(w, g, m, v, k)
    }
}

#[inline(always)]
fn adam<T: Real>(w: &mut [T], g: &[T], m: &mut [T], v: &mut [T], k: AdamConsts<T>) {
    let n = w.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        // the clipped gradient, as clipping in place would have stored it
        let g = g[i] * k.grad_scale;
        m[i] = k.b1 * m[i] + (T::one() - k.b1) * g;
        v[i] = k.b2 * v[i] + (T::one() - k.b2) * g * g;
        // PyTorch: p -= lr/bc1 · m / (√v / √bc2 + ε)
        w[i] -= k.step * m[i] / (v[i].sqrt() / k.sqrt_bc2 + k.eps);
    }
}

/// The gradients' global L2 norm and the factor that brings it to `max_norm`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clip {
    /// The norm before clipping.
    pub norm: f64,
    /// max/(norm + 1e-6), as PyTorch's clip_grad_norm_ scales, when the norm exceeds `max_norm`
    /// (> 0); None otherwise.
    pub scale: Option<f64>,
}

/// Clip the gradients' global L2 norm to `max_norm` (0: no clipping). The factor is not applied
/// here: `Optimizer::step` multiplies each gradient by it as it reads it (the same bits as
/// scaling in place, one pass over every gradient fewer). The parameters' sums of squares run
/// in parallel, one per parameter, and are added in order: the same norm on any thread count.
pub fn clip_grad_norm<T: Real>(params: &[&mut Param<T>], max_norm: f64) -> Clip {
    let sum_sq = |p: &&mut Param<T>| sum_sq_f64(p.grad.as_slice().unwrap());
    let norm = if crate::tensor::threads() > 1 {
        use rayon::prelude::*;
        params.par_iter().map(sum_sq).collect::<Vec<f64>>().iter().sum::<f64>().sqrt()
    } else {
        params.iter().map(sum_sq).sum::<f64>().sqrt()
    };
    let scale = (max_norm > 0.0 && norm > max_norm).then(|| max_norm / (norm + 1e-6));
    Clip { norm, scale }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn adam_first_steps_match_pytorch_formula() {
        let mut p = Param::new("w", array![[1.0f64, -2.0]], Group::Other);
        p.grad = array![[0.5, -0.1]];
        let mut opt = Optimizer::new(Kind::Adam);
        let mut ps = [&mut p];
        opt.step(&mut ps, Clip { norm: 0.0, scale: None }, 0.0, 0.1);
        // step 1: m̂ = g, v̂ = g² → update = lr·g/(|g| + ε) ≈ lr·sign(g)
        assert!((ps[0].value[[0, 0]] - (1.0 - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-12);
        assert!((ps[0].value[[0, 1]] - (-2.0 + 0.1 * 0.1 / (0.1 + 1e-8))).abs() < 1e-12);
        assert!((ps[0].moments.as_ref().unwrap().v[[0, 0]] - 0.001 * 0.25).abs() < 1e-15, "raw second moment");
    }

    #[test]
    fn clipping_scales_to_the_threshold() {
        let mut a = Param::new("a", array![[0.0f64]], Group::Other);
        let mut b = Param::new("b", array![[0.0f64]], Group::Other);
        a.grad = array![[3.0]];
        b.grad = array![[4.0]];
        let ps = [&mut a, &mut b];
        assert_eq!(clip_grad_norm(&ps, 1.0), Clip { norm: 5.0, scale: Some(1.0 / (5.0 + 1e-6)) });
        assert_eq!(clip_grad_norm(&ps, 5.0), Clip { norm: 5.0, scale: None }, "at the threshold");
        assert_eq!(clip_grad_norm(&ps, 0.0), Clip { norm: 5.0, scale: None }, "no clipping");
    }

    /// The update reads the clipped gradient: the same values as scaling the gradients in place
    /// first, bit for bit, for SGD and for Adam's moments and weights.
    #[test]
    fn steps_apply_the_clip_as_in_place_scaling_would() {
        let grad = array![[0.3f32, -1.7, 2.9e-3, 11.0]];
        for kind in [Kind::Sgd, Kind::Adam] {
            let mut fused = Param::new("w", array![[0.5f32, -0.25, 1.0, 2.0]], Group::Other);
            let mut scaled = fused.clone();
            fused.grad = grad.clone();
            let clip = clip_grad_norm(&[&mut fused], 2.0);
            let scale = clip.scale.expect("norm above 2") as f32;
            scaled.grad = grad.mapv(|g| g * scale);
            let (mut a, mut b) = (Optimizer::new(kind), Optimizer::new(kind));
            for _ in 0..3 {
                a.step(&mut [&mut fused], clip, 0.0, 0.01);
                b.step(&mut [&mut scaled], Clip { norm: 0.0, scale: None }, 0.0, 0.01);
            }
            assert_eq!(fused.value, scaled.value, "{kind:?}");
            if kind == Kind::Adam {
                let (fm, sm) = (fused.moments.as_ref().unwrap(), scaled.moments.as_ref().unwrap());
                assert_eq!((&fm.m, &fm.v), (&sm.m, &sm.v));
            }
        }
    }

    #[test]
    fn clipping_f32_gradients_whose_squares_overflow_f32() {
        // 3e20² = 9e40 > f32::MAX: the norm must come out finite (5e20) and the clip exact.
        let mut a = Param::new("a", array![[0.0f32, 0.0]], Group::Other);
        a.grad = array![[3e20f32, -4e20]];
        let clip = clip_grad_norm(&[&mut a], 5.0);
        assert!((clip.norm / 5e20 - 1.0).abs() < 1e-6, "{}", clip.norm);
        let scaled = a.grad.mapv(|g| g * clip.scale.unwrap() as f32);
        assert!((scaled[[0, 0]] - 3.0).abs() < 1e-5 && (scaled[[0, 1]] + 4.0).abs() < 1e-5);
    }
}
