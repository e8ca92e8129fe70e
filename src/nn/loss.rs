//! The cross-entropy of a softmax over the logits, whose gradient is computed in place of the
//! logits, and the statistics an evaluation sums (loss, predictions, correct arg-maxes).

use ndarray::Array2;

use crate::tensor::{Real, simd_kernel};

/// Summed loss (nats), number of predictions, and how many had the target as arg-max.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub loss_sum: f64,
    pub count: usize,
    pub correct: usize,
}

impl Stats {
    pub fn add(&mut self, o: Stats) {
        self.loss_sum += o.loss_sum;
        self.count += o.count;
        self.correct += o.correct;
    }
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
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
        let y = y as usize;
        // logits + bias and their max in one pass
        let max = crate::tensor::add_max(row, bias);
        // the arg-max is the first entry equal to the max (a scalar search was ~half a row of
        // compares per row)
        let best = crate::tensor::first_index_of(row, max).unwrap_or(0);
        correct += (best == y) as usize;
        let sum = crate::tensor::exp_shift_sum(row, max);
        let p_y = row[y] / sum;
        loss -= p_y.f64().ln().max(-1e30);
        // grad_scale·(p − onehot) and the bias gradient's column sums in one pass, the target's
        // entry between the two runs around it
        let inv = grad_scale / sum;
        let (head, tail) = row.split_at_mut(y);
        let (d_head, d_tail) = dbias.split_at_mut(y);
        crate::tensor::scale_accumulate(head, inv, d_head);
        tail[0] = tail[0] * inv - grad_scale;
        d_tail[0] += tail[0];
        crate::tensor::scale_accumulate(&mut tail[1..], inv, &mut d_tail[1..]);
    }
    (loss, correct)
}
