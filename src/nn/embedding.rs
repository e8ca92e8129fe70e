//! Word embedding (full precision, trained): a row gather forward, a scatter-add backward.

use ndarray::{Array2, ArrayView2};

use crate::tensor::{Group, Param, Real, ensure_shape};

pub struct Embedding<T> {
    /// (V, E)
    pub weight: Param<T>,
}

impl<T: Real> Embedding<T> {
    pub fn new(vocab: usize, dim: usize) -> Self {
        Embedding { weight: Param::new("embedding.weight", Array2::zeros((vocab, dim)), Group::Other) }
    }

    pub fn forward(&self, ids: &[u32], out: &mut Array2<T>) {
        ensure_shape(out, ids.len(), self.weight.value.ncols());
        for (mut row, &id) in out.outer_iter_mut().zip(ids) {
            row.assign(&self.weight.value.row(id as usize));
        }
    }

    pub fn backward(&mut self, ids: &[u32], d_out: ArrayView2<T>) {
        for (d, &id) in d_out.outer_iter().zip(ids) {
            self.weight.grad.row_mut(id as usize).zip_mut_with(&d, |a, &b| *a += b);
        }
    }
}
