//! The softmax layer: logits = X·Wᵀ + b over all T·B rows of a window in one GEMM, and the
//! cross-entropy whose gradient is computed in place of the logits. The bias is added, and its
//! gradient summed, inside the softmax's pass over each row: the logits (T·B × V, 28 MB for
//! PTB-word) are then read and written once per direction instead of twice.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::tensor::{Group, Param, Real, ensure_shape, gemm, simd_kernel};

pub struct Linear<T> {
    /// (out, in), PyTorch layout.
    pub weight: Param<T>,
    /// (1, out)
    pub bias: Param<T>,
}

impl<T: Real> Linear<T> {
    pub fn new(prefix: &str, input: usize, output: usize) -> Self {
        Linear {
            weight: Param::new(format!("{prefix}.weight"), Array2::zeros((output, input)), Group::Other),
            bias: Param::new(format!("{prefix}.bias"), Array2::zeros((1, output)), Group::Other),
        }
    }

    /// out = X·Wᵀ, without the bias: `softmax_cross_entropy` adds it (`self.bias`).
    pub fn forward_unbiased(&self, x: ArrayView2<T>, out: &mut Array2<T>) {
        ensure_shape(out, x.nrows(), self.weight.value.nrows());
        gemm(out.view_mut(), false, x, self.weight.value.t(), T::one());
    }

    /// Accumulate dW = dYᵀ·X and db (= Σ dY, summed by `softmax_cross_entropy`); write
    /// dX = dY·W if asked.
    pub fn backward(&mut self, x: ArrayView2<T>, dy: ArrayView2<T>, db: &[T], dx: Option<ArrayViewMut2<T>>) {
        gemm(self.weight.grad.view_mut(), true, dy.t(), x, T::one());
        self.bias.grad.as_slice_mut().unwrap().iter_mut().zip(db).for_each(|(a, &b)| *a += b);
        if let Some(dx) = dx {
            gemm(dx, false, dy, self.weight.value.view(), T::one());
        }
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        vec![&mut self.weight, &mut self.bias]
    }
}

/// Summed cross-entropy (nats) of `logits` + `bias` ((N, V) + (V)) against `targets`, and the
/// number of rows whose arg-max is the target. Replaces the logits by `grad_scale`·(softmax −
/// onehot), the gradient of `grad_scale` × the summed loss, and writes that gradient's column
/// sums (the bias gradient) into `dbias`. Rows are split across the GEMM threads when there
/// are enough of them; losses are summed in f64.
pub fn softmax_cross_entropy<T: Real>(
    logits: &mut Array2<T>,
    targets: &[u32],
    grad_scale: T,
    bias: &[T],
    dbias: &mut Vec<T>,
) -> (f64, usize) {
    assert_eq!(logits.nrows(), targets.len());
    let v = logits.ncols();
    assert_eq!(bias.len(), v);
    dbias.clear();
    dbias.resize(v, T::zero());
    let data = logits.as_slice_mut().expect("contiguous logits");
    let threads = crate::tensor::threads();
    if threads > 1 && data.len() >= 1 << 18 {
        use rayon::prelude::*;
        let rows_per = targets.len().div_ceil(threads);
        let parts: Vec<(f64, usize, Vec<T>)> = data
            .par_chunks_mut(rows_per * v)
            .zip(targets.par_chunks(rows_per))
            .map(|(d, t)| {
                let mut db = vec![T::zero(); v];
                let (loss, correct) = softmax_rows(d, t, grad_scale, bias, &mut db);
                (loss, correct, db)
            })
            .collect();
        let mut total = (0.0, 0);
        for (loss, correct, db) in parts {
            total = (total.0 + loss, total.1 + correct);
            dbias.iter_mut().zip(&db).for_each(|(a, &b)| *a += b);
        }
        total
    } else {
        softmax_rows(data, targets, grad_scale, bias, dbias)
    }
}

simd_kernel! {
    fn softmax_rows<T: Real>(
        data: &mut [T],
        targets: &[u32],
        grad_scale: T,
        bias: &[T],
        dbias: &mut [T],
    ) -> (f64, usize) {
        rows(data, targets, grad_scale, bias, dbias)
    }
}

#[inline(always)]
fn rows<T: Real>(data: &mut [T], targets: &[u32], grad_scale: T, bias: &[T], dbias: &mut [T]) -> (f64, usize) {
    let v = bias.len();
    let dbias = &mut dbias[..v];
    let mut loss = 0.0f64;
    let mut correct = 0;
    for (row, &y) in data.chunks_exact_mut(v).zip(targets) {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x += b;
        }
        let max = crate::tensor::max(row);
        // the arg-max is the first entry equal to the max
        let best = row.iter().position(|&x| x == max).unwrap_or(0);
        correct += (best == y as usize) as usize;
        let sum = crate::tensor::exp_shift_sum(row, max);
        let p_y = row[y as usize] / sum;
        loss -= p_y.f64().ln().max(-1e30);
        let inv = grad_scale / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
        row[y as usize] -= grad_scale;
        for (d, &x) in dbias.iter_mut().zip(row.iter()) {
            *d += x;
        }
    }
    (loss, correct)
}
