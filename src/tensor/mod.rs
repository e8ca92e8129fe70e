//! The numeric foundation: the scalar trait every layer is generic over (`real`), vectorizable
//! reductions (`reduce`), the run-time SIMD dispatch of the hot kernels (`simd`), one GEMM entry
//! point with its threads (`gemm`), our own packed per-step and window products (`panel_gemm`,
//! f32; `amx`, bf16) on cache-line-aligned buffers (`aligned`), and trained parameters
//! (`param`).

mod aligned;
mod amx;
mod gemm;
mod panel_gemm;
mod param;
mod real;
mod reduce;
mod rows;
mod simd;
mod tiled;

pub use amx::{Bf16Unit, Precision, bf16_products};
pub use gemm::{faer_product, flush_denormals, gemm, gemm_with, runs_window_kernel, set_threads, threads};
pub use panel_gemm::{FixedRhs, PanelMatrix};
pub use param::{Group, Moments, Param};
pub use real::{Real, expf, tanhf};
#[cfg(test)]
pub(crate) use reduce::one_at_a_time;
pub use reduce::{
    add_max, exp_shift_sum, first_index_of, scale_accumulate, sum, sum_sq, sum_sq_dev, sum_sq_f64, sum_sq_f64_of_sum,
    sums, sums_sq_dev,
};
pub use rows::{add_rows_at, column_sums};
pub use simd::{Simd, simd};
#[cfg(target_arch = "x86_64")]
pub(crate) use simd::{lane_mask8, transpose_runs8, transpose_runs16};
pub(crate) use simd::{simd_kernel, simd_method};
pub use tiled::zip_tiled;

use ndarray::Array2;

/// Resize a work buffer only when its shape changes (the last window of an epoch is shorter),
/// so steady-state training allocates nothing.
pub fn ensure_shape<T: Real>(a: &mut Array2<T>, rows: usize, cols: usize) {
    if a.dim() != (rows, cols) {
        *a = Array2::zeros((rows, cols));
    }
}
