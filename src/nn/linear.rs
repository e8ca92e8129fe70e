//! The output layer: logits = X·Wᵀ over all T·B rows of a window in one GEMM. Its bias is
//! added, and its gradient summed, by the loss (`loss.rs`) inside the softmax's pass over each
//! row: the logits (T·B × V, 28 MB for PTB-word) are then read and written once per direction
//! instead of twice. With `gemm_precision = "bf16"` its three products run on AMX
//! (`tensor::amx`), each operand rounded to bf16 per window.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::tensor::{Group, PanelMatrix, Param, Precision, Real, ensure_shape};

pub struct Linear<T> {
    /// (out, in), PyTorch layout.
    pub weight: Param<T>,
    /// (1, out)
    pub bias: Param<T>,
    /// Precision of the three products (`[train] gemm_precision`).
    pub precision: Precision,
    /// The right-hand side of a bf16 product, packed per call.
    panels: PanelMatrix,
}

impl<T: Real> Linear<T> {
    pub fn new(prefix: &str, input: usize, output: usize) -> Self {
        Linear {
            weight: Param::new(format!("{prefix}.weight"), Array2::zeros((output, input)), Group::Other),
            bias: Param::new(format!("{prefix}.bias"), Array2::zeros((1, output)), Group::Other),
            precision: Precision::F32,
            panels: PanelMatrix::default(),
        }
    }

    /// out = X·Wᵀ, without the bias: `loss::softmax_cross_entropy` adds it (`self.bias`).
    pub fn forward_unbiased(&mut self, x: ArrayView2<T>, out: &mut Array2<T>) {
        ensure_shape(out, x.nrows(), self.weight.value.nrows());
        self.panels.gemm_once(self.precision, out.view_mut(), false, x, self.weight.value.t());
    }

    /// Accumulate dW = dYᵀ·X and db (= Σ dY, summed by `softmax_cross_entropy`); write
    /// dX = dY·W if asked.
    pub fn backward(&mut self, x: ArrayView2<T>, dy: ArrayView2<T>, db: &[T], dx: Option<ArrayViewMut2<T>>) {
        self.panels.gemm_once(self.precision, self.weight.grad.view_mut(), true, dy.t(), x);
        self.bias.grad.as_slice_mut().unwrap().iter_mut().zip(db).for_each(|(a, &b)| *a += b);
        if let Some(dx) = dx {
            self.panels.gemm_once(self.precision, dx, false, dy, self.weight.value.view());
        }
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        vec![&mut self.weight, &mut self.bias]
    }
}
