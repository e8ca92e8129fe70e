//! The initialisations of docs/SPEC.md §3: language models and sequential MNIST.

use ndarray::{Array2, s};
use ndarray_rand::rand_distr::{Distribution, StandardNormal};
use rand::Rng;

use super::{Init, Model};
use crate::nn::Normalization;
use crate::tensor::Real;

impl<T: Real> Model<T> {
    /// Weight norm: g = row norms of the initial weights. Layer norm: gain 1 (sequential MNIST
    /// 0.1). Batch norm: gain U(0, 1) as torch 0.4.1 initialises it (separate statistics on
    /// sequential MNIST: 0.1). Biases 0, running mean 0, running variance 1.
    pub(super) fn init_normalizers<R: Rng>(&mut self, rng: &mut R) {
        let mnist = self.init == Init::SeqMnist;
        for layer in &mut self.layers {
            layer.init_weight_norm_gains();
            let norm = layer.normalization;
            for n in layer.normalizers_mut() {
                match norm {
                    Normalization::Layer | Normalization::BatchSeparate if mnist => n.gain.value.fill(T::r(0.1)),
                    Normalization::BatchShared | Normalization::BatchSeparate => {
                        n.gain.value.mapv_inplace(|_| T::r(rng.random_range(0.0..1.0)))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every recurrent tensor U(−1/√H, 1/√H) (the GRU's b_hn too); decoder weight
    /// U(−0.1, 0.1), bias 0; embedding U(−0.1, 0.1).
    pub(super) fn init_language_model<R: Rng>(&mut self, rng: &mut R) {
        let k = 1.0 / (self.hidden as f64).sqrt();
        for layer in &mut self.layers {
            for p in [Some(&mut layer.w_x), Some(&mut layer.w_h), Some(&mut layer.bias), layer.bias_hn.as_mut()]
                .into_iter()
                .flatten()
            {
                uniform(&mut p.value, k, rng);
            }
        }
        uniform(&mut self.decoder.weight.value, 0.1, rng);
        if let Some(e) = &mut self.embedding {
            uniform(&mut e.weight.value, 0.1, rng);
        }
    }

    /// Forget-gate bias 1 (the GRU's update gate z: the second block too), others 0; W_h's
    /// candidate block (LSTM a, GRU n: the third) = identity, the other blocks orthogonal; W_x a
    /// random unit-norm vector (layer 0; above it, like W_h's blocks). Decoder as PyTorch's
    /// nn.Linear default, U(−1/√H, 1/√H). (docs/SPEC.md §3 and §6)
    pub(super) fn init_mnist<R: Rng>(&mut self, rng: &mut R) {
        let h = self.hidden;
        for (l, layer) in self.layers.iter_mut().enumerate() {
            layer.bias.value.fill(T::zero());
            layer.bias.value.slice_mut(s![0, h..2 * h]).fill(T::one());
            let gates = layer.gates();
            for k in 0..gates {
                let mut block = layer.w_h.value.slice_mut(s![k * h..(k + 1) * h, ..]);
                if k == 2 {
                    block.fill(T::zero());
                    block.diag_mut().fill(T::one());
                } else {
                    block.assign(&orthogonal::<T, R>(h, rng));
                }
            }
            if l == 0 {
                let v: Vec<f64> = (0..gates * h).map(|_| StandardNormal.sample(rng)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                for (w, x) in layer.w_x.value.iter_mut().zip(v) {
                    *w = T::r(x / norm);
                }
            } else {
                for k in 0..gates {
                    layer.w_x.value.slice_mut(s![k * h..(k + 1) * h, ..]).assign(&orthogonal::<T, R>(h, rng));
                }
            }
        }
        let k = 1.0 / (h as f64).sqrt();
        uniform(&mut self.decoder.weight.value, k, rng);
        uniform(&mut self.decoder.bias.value, k, rng);
    }
}

fn uniform<T: Real, R: Rng>(a: &mut Array2<T>, k: f64, rng: &mut R) {
    for x in a.iter_mut() {
        *x = T::r(rng.random_range(-k..k));
    }
}

/// An n×n orthogonal matrix: Gram–Schmidt (twice, for stability) on a Gaussian matrix.
fn orthogonal<T: Real, R: Rng>(n: usize, rng: &mut R) -> Array2<T> {
    let mut q: Vec<Vec<f64>> = (0..n).map(|_| (0..n).map(|_| StandardNormal.sample(rng)).collect()).collect();
    for j in 0..n {
        for _ in 0..2 {
            for k in 0..j {
                let (done, rest) = q.split_at_mut(j);
                let (v, u) = (&mut rest[0], &done[k]);
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
        }
        let norm = q[j].iter().map(|x| x * x).sum::<f64>().sqrt();
        q[j].iter_mut().for_each(|x| *x /= norm);
    }
    // columns of the result are the orthonormal vectors
    Array2::from_shape_fn((n, n), |(i, j)| T::r(q[j][i]))
}
