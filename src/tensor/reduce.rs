//! Reductions over slices written so that they vectorize: a single float accumulator forbids
//! the reordering that vectorization needs, so each sums into independent lanes.

use crate::tensor::Real;

/// Independent accumulators of the lane-wise reductions below: a single float accumulator
/// forbids the reordering that vectorization needs, 16 of them let it happen (two AVX2
/// registers of f32).
const LANES: usize = 16;

/// Σ f(x) over a slice in `LANES` independent accumulators (then added in order), so that
/// the loop vectorizes; the reductions below are this with their own `f`.
#[inline(always)]
fn lane_sum<T: Copy, A: Copy + std::ops::Add<Output = A> + std::ops::AddAssign + std::iter::Sum>(
    x: &[T],
    zero: A,
    f: impl Fn(T) -> A,
) -> A {
    let mut acc = [zero; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().copied().sum::<A>() + rest.iter().map(|&v| f(v)).sum::<A>()
}

/// Σ x² of a slice, vectorizable.
#[inline(always)]
pub fn sum_sq<T: Real>(x: &[T]) -> T {
    lane_sum(x, T::zero(), |v| v * v)
}

/// Σ x² of a slice accumulated in f64, vectorizable: for norms of gradients, whose squares can
/// overflow f32 while the gradients themselves are finite (plain bc at H = 512 reaches 1e20
/// at step 0; PyTorch's CPU norm accumulates f32 in double too).
#[inline(always)]
pub fn sum_sq_f64<T: Real>(x: &[T]) -> f64 {
    lane_sum(x, 0.0f64, |v| v.f64() * v.f64())
}

/// Σ x of a slice, vectorizable.
#[inline(always)]
pub fn sum<T: Real>(x: &[T]) -> T {
    lane_sum(x, T::zero(), |v| v)
}

/// Σ (x − m)² of a slice, vectorizable.
#[inline(always)]
pub fn sum_sq_dev<T: Real>(x: &[T], m: T) -> T {
    lane_sum(x, T::zero(), |v| (v - m) * (v - m))
}

/// max of a non-empty slice, vectorizable.
#[inline(always)]
pub fn max<T: Real>(x: &[T]) -> T {
    let mut acc = [x[0]; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().chain(rest).copied().fold(x[0], |m, v| if v > m { v } else { m })
}

/// x ← e^(x − m) in place, returning Σ e^(x − m); vectorizable.
#[inline(always)]
pub fn exp_shift_sum<T: Real>(x: &mut [T], m: T) -> T {
    let mut acc = [T::zero(); LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = (c[l] - m).exp_fast();
            acc[l] += c[l];
        }
    }
    let mut s = acc.iter().copied().sum::<T>();
    for v in chunks.into_remainder() {
        *v = (*v - m).exp_fast();
        s += *v;
    }
    s
}

/// Σ (a + b)² of two slices of one length, accumulated in f64, vectorizable: the squared norm
/// of a gradient that arrives in two parts (from the future and from above).
#[inline(always)]
pub fn sum_sq_f64_of_sum<T: Real>(a: &[T], b: &[T]) -> f64 {
    let b = &b[..a.len()];
    let mut acc = [0.0f64; LANES];
    let n = a.len() / LANES * LANES;
    for j in (0..n).step_by(LANES) {
        for l in 0..LANES {
            let d = (a[j + l] + b[j + l]).f64();
            acc[l] += d * d;
        }
    }
    let tail: f64 = (n..a.len()).map(|j| (a[j] + b[j]).f64().powi(2)).sum();
    acc.iter().sum::<f64>() + tail
}
