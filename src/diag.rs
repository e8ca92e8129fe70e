//! The paper's diagnostics (docs/SPEC.md §5; the GRU's, §6): λ1/λ2, the bound on how much the backward signal can
//! grow through one step, from the spectral norms of the recurrent blocks the forward pass
//! actually uses, γ1 = max |c_{t−1}|, and the normalizers' gains and divisors; and the norm of
//! ∂ξ/∂h_t at every step of a window.
//!
//! With F_k the per-gate factor (‖W_hk‖ for none, g_k‖D_k⁻¹W_hk‖ for weight norm,
//! (g_k/σ_k)‖W_hk‖ for layer and batch norm):
//!   λ1 = ¼F_i + (γ1/4)F_f + F_a + ¼F_o                           (none, weight, layer)
//!   λ1 = ½F_i² + (γ1²/2)F_f² + 8F_a² + ¼F_o²                     (batch: squared norms)
//!   λ2 = λ1 without the o term.

use ndarray::{ArrayView2, s};

use crate::model::Model;
use crate::nn::norm::{NormKind, Normalizer};
use crate::nn::{Cache, CellKind, Layer, Normalization};
use crate::run_dir::LambdaRow;
use crate::tensor::Real;

/// Power iteration: at most this many iterations, stopping when the estimate changes by less
/// than `POWER_TOL` relative. Estimates are lower bounds of the true norm that tighten with
/// every iteration; warm starts from the previous vector make later calls cheap.
pub const POWER_MAX_ITER: usize = 100;
pub const POWER_TOL: f64 = 1e-6;

/// Spectral norm ‖M‖₂ of an (r, c) matrix by power iteration on MᵀM, warm-started from `v`
/// (length c; replaced by the new right singular vector estimate). Returns (norm, iterations).
pub fn spectral_norm<T: Real>(m: ArrayView2<T>, v: &mut Vec<f64>) -> (f64, usize) {
    let (r, c) = m.dim();
    if v.len() != c || v.iter().all(|&x| x == 0.0) {
        // deterministic, generic start: not orthogonal to any particular singular vector
        *v = (0..c).map(|i| 1.0 + 0.5 * ((i * 7919 % 97) as f64 / 97.0)).collect();
    }
    normalize(v);
    let mut u = vec![0.0; r];
    let mut sigma = 0.0;
    for it in 1..=POWER_MAX_ITER {
        // u = M v; σ = ‖u‖; v = Mᵀu / ‖Mᵀu‖
        for (i, ui) in u.iter_mut().enumerate() {
            *ui = m.row(i).iter().zip(v.iter()).map(|(a, b)| a.f64() * b).sum();
        }
        let new_sigma = norm(&u);
        if new_sigma == 0.0 {
            return (0.0, it);
        }
        for (j, vj) in v.iter_mut().enumerate() {
            *vj = m.column(j).iter().zip(u.iter()).map(|(a, b)| a.f64() * b).sum();
        }
        normalize(v);
        let done = (new_sigma - sigma).abs() <= POWER_TOL * new_sigma;
        sigma = new_sigma;
        if done {
            return (sigma, it);
        }
    }
    (sigma, POWER_MAX_ITER)
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|a| a * a).sum::<f64>().sqrt()
}

fn normalize(x: &mut [f64]) {
    let n = norm(x);
    if n > 0.0 {
        x.iter_mut().for_each(|a| *a /= n);
    }
}

/// Per-gate inputs of the bound for one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct GateTerms {
    pub norm: Vec<f64>,
    pub g: Vec<Option<f64>>,
    pub sigma: Vec<Option<f64>>,
}

impl GateTerms {
    /// F_k: ‖W_hk‖ scaled by the normalizer, |g_k|/σ_k (layer, batch) or |g_k| (weight).
    pub fn factor(&self, k: usize) -> f64 {
        let ratio = match (self.g[k], self.sigma[k]) {
            (Some(g), Some(s)) => g.abs() / s,
            (Some(g), None) => g.abs(),
            _ => 1.0,
        };
        ratio * self.norm[k]
    }
}

/// λ1 and λ2 from the per-gate terms (docs/SPEC.md §5).
pub fn lambdas(normalization: Normalization, terms: &GateTerms, gamma1: f64) -> (f64, f64) {
    let f: Vec<f64> = (0..4).map(|k| terms.factor(k)).collect();
    let (l2, o) = match normalization {
        Normalization::BatchShared | Normalization::BatchSeparate => {
            (0.5 * f[0] * f[0] + 0.5 * gamma1 * gamma1 * f[1] * f[1] + 8.0 * f[2] * f[2], 0.25 * f[3] * f[3])
        }
        _ => (0.25 * f[0] + 0.25 * gamma1 * f[1] + f[2], 0.25 * f[3]),
    };
    (l2 + o, l2)
}

/// Warm-start vectors of the power iterations, per layer and gate. They are part of a run's
/// state (checkpointed), so that a resumed run computes the same estimates as one that was
/// never stopped.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostics {
    vectors: Vec<Vec<Vec<f64>>>,
}

impl Diagnostics {
    /// λ rows for every layer, from the window the model just ran (training mode).
    pub fn lambda_rows<T: Real>(&mut self, model: &Model<T>, step: u64, epoch: usize) -> Vec<LambdaRow> {
        let caches = model.caches();
        self.vectors.resize_with(model.layers.len(), Default::default);
        let mut rows = Vec::new();
        for (l, (layer, cache)) in model.layers.iter().zip(caches).enumerate() {
            self.vectors[l].resize_with(layer.gates(), Vec::new);
            let terms = self.gate_terms(l, layer, cache);
            let row = LambdaRow { step, epoch, layer: l, cell: layer.cell, ..LambdaRow::default() };
            rows.push(match layer.cell {
                CellKind::Lstm => lstm_row(row, layer.normalization, &terms, cache),
                CellKind::Gru => gru_row(row, &terms, cache, layer.hidden),
            });
        }
        rows
    }

    /// F_k's parts for every gate block k of a layer's recurrent weights: the spectral norm of
    /// the block the forward pass used (under weight norm, of D_k⁻¹W_hk, the quantized block
    /// with unit rows), the normalizer's gain and divisor.
    fn gate_terms<T: Real>(&mut self, l: usize, layer: &Layer<T>, cache: &Cache<T>) -> GateTerms {
        let h = layer.hidden;
        let valid = real_state_steps(cache);
        let gates = layer.gates();
        let mut terms = GateTerms { norm: vec![0.0; gates], g: vec![None; gates], sigma: vec![None; gates] };
        for k in 0..gates {
            let cols = s![.., k * h..(k + 1) * h];
            terms.norm[k] = match &layer.wn_gain_h {
                // ‖D_k⁻¹ W_hk‖: the quantized block with unit rows (columns here: transposed)
                Some(gain) => {
                    let mut unit = cache.quantized_recurrent_t().slice_move(cols).mapv(|x| x.f64());
                    for mut col in unit.columns_mut() {
                        let n = col.iter().map(|x| x * x).sum::<f64>().sqrt();
                        if n > 0.0 {
                            col.mapv_inplace(|x| x / (n + 1e-8));
                        }
                    }
                    let g =
                        gain.value.slice(s![0, k * h..(k + 1) * h]).iter().fold(0.0f64, |m, g| m.max(g.f64().abs()));
                    terms.g[k] = Some(g);
                    spectral_norm(unit.view(), &mut self.vectors[l][k]).0
                }
                None => spectral_norm(cache.recurrent_weights_t().slice_move(cols), &mut self.vectors[l][k]).0,
            };
            if let Some(nh) = &layer.norm_h {
                let (g, sigma) = gain_over_sigma(nh, cache, k, &valid);
                terms.g[k] = Some(g);
                terms.sigma[k] = Some(sigma);
            }
        }
        terms
    }
}

/// The LSTM's row (docs/SPEC.md §5): γ1 = max |c_{t−1}| over the window.
fn lstm_row<T: Real>(row: LambdaRow, normalization: Normalization, t: &GateTerms, cache: &Cache<T>) -> LambdaRow {
    let gamma1 = cache.c_in().iter().fold(0.0f64, |m, c| m.max(c.f64().abs()));
    let (lambda1, lambda2) = lambdas(normalization, t, gamma1);
    LambdaRow {
        lambda1,
        lambda2: Some(lambda2),
        gamma1: Some(gamma1),
        norm_i: Some(t.norm[0]),
        g_i: t.g[0],
        sigma_i: t.sigma[0],
        norm_f: Some(t.norm[1]),
        g_f: t.g[1],
        sigma_f: t.sigma[1],
        norm_a: Some(t.norm[2]),
        g_a: t.g[2],
        sigma_a: t.sigma[2],
        norm_o: Some(t.norm[3]),
        g_o: t.g[3],
        sigma_o: t.sigma[3],
        ..row
    }
}

/// The GRU's row (docs/SPEC.md §6): λ1 = (γ_z/4)F_z + F_n + (γ_u/4)F_r, with ζ = max z,
/// γ_z = max |h_{t−1} − n| and γ_u = max |u| over every step of the window; the linear form for
/// every normalization.
fn gru_row<T: Real>(row: LambdaRow, t: &GateTerms, cache: &Cache<T>, h: usize) -> LambdaRow {
    let gates = cache.gates();
    let z = gates.slice(s![.., h..2 * h]);
    let n = gates.slice(s![.., 2 * h..3 * h]);
    let zeta = z.iter().fold(0.0f64, |m, v| m.max(v.f64()));
    let gamma_z =
        ndarray::Zip::from(cache.h_in_window()).and(n).fold(0.0f64, |m, &hp, &nv| m.max((hp - nv).f64().abs()));
    let gamma_u = cache.aux().iter().fold(0.0f64, |m, u| m.max(u.f64().abs()));
    let (fr, fz, fnn) = (t.factor(0), t.factor(1), t.factor(2));
    LambdaRow {
        lambda1: gamma_z / 4.0 * fz + fnn + gamma_u / 4.0 * fr,
        zeta: Some(zeta),
        gamma_z: Some(gamma_z),
        gamma_u: Some(gamma_u),
        norm_r: Some(t.norm[0]),
        g_r: t.g[0],
        sigma_r: t.sigma[0],
        norm_z: Some(t.norm[1]),
        g_z: t.g[1],
        sigma_z: t.sigma[1],
        norm_n: Some(t.norm[2]),
        g_n: t.g[2],
        sigma_n: t.sigma[2],
        ..row
    }
}

/// Steps of the window whose incoming h is a real state, not the all-zero state an epoch
/// starts from (normalizing W·0 divides by √ε).
fn real_state_steps<T: Real>(cache: &Cache<T>) -> Vec<bool> {
    (0..cache.steps()).map(|t| cache.h_in(t).iter().any(|x| *x != T::zero())).collect()
}

/// (g_k, σ_k) of gate block k of the recurrent normalizer. Layer norm: g_k = max |gain|,
/// σ_k = the smallest divisor over the samples and real-state steps of the window. Batch
/// norm: the feature j and step t maximising |g_kj|/σ_kjt.
fn gain_over_sigma<T: Real>(nh: &Normalizer<T>, cache: &Cache<T>, k: usize, valid: &[bool]) -> (f64, f64) {
    let h = nh.hidden;
    let gains = nh.gain.value.slice(s![0, k * h..(k + 1) * h]);
    let rstd = cache.recurrent_rstd();
    let batch = cache.batch();
    match nh.kind {
        NormKind::Layer => {
            let g = gains.iter().fold(0.0f64, |m, g| m.max(g.f64().abs()));
            let mut max_rstd = 0.0f64;
            for (t, _) in valid.iter().enumerate().filter(|(_, v)| **v) {
                for r in nh.rstd_rows(t, batch) {
                    max_rstd = max_rstd.max(rstd[[r, k]].f64());
                }
            }
            (g, if max_rstd > 0.0 { 1.0 / max_rstd } else { f64::NAN })
        }
        NormKind::Batch { .. } => {
            let mut best = (f64::NAN, f64::NAN, -1.0);
            for (t, _) in valid.iter().enumerate().filter(|(_, v)| **v) {
                let row = nh.rstd_rows(t, batch).start;
                for (j, g) in gains.iter().enumerate() {
                    let rstd = rstd[[row, k * h + j]].f64();
                    let ratio = g.f64().abs() * rstd;
                    if ratio > best.2 {
                        best = (g.f64().abs(), 1.0 / rstd, ratio);
                    }
                }
            }
            (best.0, best.1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn spectral_norms_of_known_matrices() {
        let d = Array2::from_diag(&array![0.5f64, -3.0, 2.0, 1.0]);
        let (n, _) = spectral_norm(d.view(), &mut Vec::new());
        assert!((n - 3.0).abs() < 1e-5, "{n}");
        // A 16×16 Hadamard matrix: entries ±1, all singular values √16 = 4, as for an
        // orthogonal ±1 matrix the paper's √d bound is tight.
        let had = Array2::from_shape_fn((16, 16), |(i, j)| if (i & j).count_ones() % 2 == 0 { 1.0f64 } else { -1.0 });
        let (n, _) = spectral_norm(had.view(), &mut Vec::new());
        assert!((n - 4.0).abs() < 1e-9, "{n}");
        // all ones: norm n
        let ones = Array2::<f64>::ones((7, 5));
        assert!((spectral_norm(ones.view(), &mut Vec::new()).0 - 35f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn power_iteration_lies_between_sharp_bounds() {
        // A pseudo-random ±1 matrix: lower bound ‖Mv‖/‖v‖ for any v, upper bound from
        // Gershgorin on MᵀM (σ² ≤ max row sum of |MᵀM|).
        let n = 40;
        let m = Array2::from_shape_fn((n, n), |(i, j)| if (i * 31 + j * 17 + i * j) % 7 < 3 { 1.0f64 } else { -1.0 });
        let mut v = Vec::new();
        let (est, iters) = spectral_norm(m.view(), &mut v);
        let gram = m.t().dot(&m);
        let upper = gram.rows().into_iter().map(|r| r.iter().map(|x| x.abs()).sum::<f64>()).fold(0.0, f64::max).sqrt();
        let probe = ndarray::Array1::from_elem(n, 1.0);
        let lower = m.dot(&probe).iter().map(|x| x * x).sum::<f64>().sqrt() / (n as f64).sqrt();
        assert!(lower <= est + 1e-9 && est <= upper + 1e-9, "{lower} <= {est} <= {upper}");
        assert!(est >= (n as f64).sqrt(), "a ±1 matrix has norm ≥ √d");
        // the fixed point satisfies MᵀM v = σ² v
        let mv = gram.dot(&ndarray::Array1::from(v.clone()));
        let resid = mv.iter().zip(&v).map(|(a, b)| (a - est * est * b).powi(2)).sum::<f64>().sqrt();
        assert!(resid < 1e-2 * est * est, "residual {resid} after {iters} iterations");
        // warm start: converges at once
        let (again, it2) = spectral_norm(m.view(), &mut v);
        assert!((again - est).abs() < 1e-4 * est && it2 <= 3, "{again} vs {est} after {it2}");
    }

    #[test]
    fn lambda_of_the_plain_cell_by_hand() {
        let terms = GateTerms { norm: vec![2.0, 4.0, 1.5, 8.0], g: vec![None; 4], sigma: vec![None; 4] };
        // ¼·2 + (0.5/4)·4 + 1.5 + ¼·8 = 0.5 + 0.5 + 1.5 + 2 = 4.5; λ2 = 2.5
        assert_eq!(lambdas(Normalization::None, &terms, 0.5), (4.5, 2.5));
        // layer norm: (g/σ)·‖W‖ per gate
        let ln = GateTerms { norm: vec![1.0; 4], g: vec![Some(2.0); 4], sigma: vec![Some(4.0); 4] };
        assert_eq!(lambdas(Normalization::Layer, &ln, 1.0), (0.125 + 0.125 + 0.5 + 0.125, 0.75));
        // batch: ½F_i² + (γ1²/2)F_f² + 8F_a² + ¼F_o² with F = 0.5
        assert_eq!(lambdas(Normalization::BatchShared, &ln, 2.0), (0.125 + 0.5 + 2.0 + 0.0625, 2.625));
    }
}
