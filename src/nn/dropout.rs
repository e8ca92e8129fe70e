//! Inverted dropout: a mask of 0 and 1/(1−p), drawn per window, applied by multiplication (so
//! backward multiplies by the same mask).

use ndarray::Array2;
use rand::Rng;

use crate::tensor::{Real, ensure_shape};

/// Fill `mask` (rows, cols) for dropout probability `p`.
pub fn sample_mask<T: Real, R: Rng>(rng: &mut R, p: f64, rows: usize, cols: usize, mask: &mut Array2<T>) {
    ensure_shape(mask, rows, cols);
    let keep = T::r(1.0 / (1.0 - p));
    for m in mask.iter_mut() {
        *m = if rng.random::<f64>() < p { T::zero() } else { keep };
    }
}
