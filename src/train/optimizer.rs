//! Adam (PyTorch semantics: bias-corrected, ε = 1e-8 added to √v̂) and plain SGD, with
//! per-group learning rates, and global-norm gradient clipping. Adam's moments live with the
//! tensors they belong to (`Param::moments`), so checkpoints and the loss-aware quantizers
//! find them by the parameter, not by an index.

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

    /// One update. Latent LSTM weights use `lr_latent`, everything else `lr_other`.
    pub fn step<T: Real>(&mut self, params: &mut [&mut Param<T>], lr_latent: f64, lr_other: f64) {
        self.t += 1;
        let lr_of = |p: &Param<T>| if p.group == Group::LatentWeight { lr_latent } else { lr_other };
        match self.kind {
            Kind::Sgd => {
                for p in params.iter_mut() {
                    let lr = T::r(lr_of(p));
                    let Param { value, grad, .. } = &mut **p;
                    value.zip_mut_with(grad, |w, &g| *w -= lr * g);
                }
            }
            Kind::Adam => {
                let (b1, b2) = (T::r(self.beta1), T::r(self.beta2));
                let bc1 = 1.0 - self.beta1.powi(self.t as i32);
                let bc2 = 1.0 - self.beta2.powi(self.t as i32);
                let eps = T::r(self.eps);
                let sqrt_bc2 = T::r(bc2.sqrt());
                for p in params.iter_mut() {
                    let k = AdamConsts { b1, b2, step: T::r(lr_of(p) / bc1), sqrt_bc2, eps };
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
        m[i] = k.b1 * m[i] + (T::one() - k.b1) * g[i];
        v[i] = k.b2 * v[i] + (T::one() - k.b2) * g[i] * g[i];
        // PyTorch: p -= lr/bc1 · m / (√v / √bc2 + ε)
        w[i] -= k.step * m[i] / (v[i].sqrt() / k.sqrt_bc2 + k.eps);
    }
}

/// Scale all gradients so their global L2 norm is at most `max_norm` (0: no clipping), as
/// PyTorch's clip_grad_norm_ does (factor max/(norm + 1e-6)). Returns the norm before clipping.
pub fn clip_grad_norm<T: Real>(params: &mut [&mut Param<T>], max_norm: f64) -> f64 {
    let norm = params.iter().map(|p| sum_sq_f64(p.grad.as_slice().unwrap())).sum::<f64>().sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = T::r(max_norm / (norm + 1e-6));
        for p in params.iter_mut() {
            p.grad.mapv_inplace(|g| g * scale);
        }
    }
    norm
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
        opt.step(&mut ps, 0.0, 0.1);
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
        let mut ps = [&mut a, &mut b];
        assert_eq!(clip_grad_norm(&mut ps, 1.0), 5.0);
        assert!((ps[0].grad[[0, 0]] - 3.0 / (5.0 + 1e-6)).abs() < 1e-15);
        assert_eq!(clip_grad_norm(&mut ps, 0.0), (ps[0].grad[[0, 0]].powi(2) + ps[1].grad[[0, 0]].powi(2)).sqrt());
    }

    #[test]
    fn clipping_f32_gradients_whose_squares_overflow_f32() {
        // 3e20² = 9e40 > f32::MAX: the norm must come out finite (5e20) and the clip exact.
        let mut a = Param::new("a", array![[0.0f32, 0.0]], Group::Other);
        a.grad = array![[3e20f32, -4e20]];
        let mut ps = [&mut a];
        let norm = clip_grad_norm(&mut ps, 5.0);
        assert!((norm / 5e20 - 1.0).abs() < 1e-6, "{norm}");
        assert!((ps[0].grad[[0, 0]] - 3.0).abs() < 1e-5 && (ps[0].grad[[0, 1]] + 4.0).abs() < 1e-5);
    }
}
