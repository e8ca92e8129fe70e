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

/// max of a non-empty slice in `LANES` lanes, then folded: what the softmax used before
/// `add_max` (kept as the reference its test compares against).
#[cfg(test)]
fn max<T: Real>(x: &[T]) -> T {
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

/// x += b in place and the max of the result, in one pass: `LANES` running maxima, each
/// starting from the first sum (lane l then takes elements l, l + LANES, … in order), folded
/// from it with the tail — `max`'s order on the added values, so its value, sign of zero
/// included.
#[inline(always)]
pub fn add_max<T: Real>(x: &mut [T], b: &[T]) -> T {
    let b = &b[..x.len()];
    let mut acc = [x[0] + b[0]; LANES];
    let n = x.len() / LANES * LANES;
    let (body, rest) = x.split_at_mut(n);
    let (b_body, b_rest) = b.split_at(n);
    for (c, bc) in body.chunks_exact_mut(LANES).zip(b_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            let v = c[l] + bc[l];
            c[l] = v;
            acc[l] = if v > acc[l] { v } else { acc[l] };
        }
    }
    for (v, &bv) in rest.iter_mut().zip(b_rest) {
        *v += bv;
    }
    acc.iter().chain(&x[n..]).copied().fold(x[0], |m, v| if v > m { v } else { m })
}

/// The first index of `v` in `x`, a chunk of lanes compared at a time.
#[inline(always)]
pub fn first_index_of<T: Real>(x: &[T], v: T) -> Option<usize> {
    let n = x.len() / LANES * LANES;
    for (i, c) in x[..n].chunks_exact(LANES).enumerate() {
        let mut hit = false;
        for &e in c {
            hit |= e == v;
        }
        if hit {
            return c.iter().position(|&e| e == v).map(|p| i * LANES + p);
        }
    }
    x[n..].iter().position(|&e| e == v).map(|p| n + p)
}

/// x ← x·s and d += x (the scaled values) over two slices of one length; vectorizable.
#[inline(always)]
pub fn scale_accumulate<T: Real>(x: &mut [T], s: T, d: &mut [T]) {
    let d = &mut d[..x.len()];
    for (x, d) in x.iter_mut().zip(d) {
        *x *= s;
        *d += *x;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The softmax's fused passes give what its separate passes gave, bit for bit: the biased
    /// logits and their max (the sign of a zero max included), the first index of the max, the
    /// scaled values and the sums they add to; lengths with and without tails, ties, ±0.
    #[test]
    fn fused_softmax_passes_match_the_separate_ones() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for len in [1usize, 5, 16, 17, 40, 100, 333] {
            let cases: [(Vec<f32>, Vec<f32>); 2] = [
                (
                    (0..len).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.5).collect(),
                    (0..len).map(|i| if i % 3 == 0 { -0.0 } else { 0.25 * (i % 4) as f32 }).collect(),
                ),
                // every value a zero: which sign the max keeps depends on the comparison order
                (
                    (0..len).map(|i| if i % 2 == 0 { -0.0 } else { 0.0 }).collect(),
                    (0..len).map(|i| if i % 5 == 1 { 0.0 } else { -0.0 }).collect(),
                ),
            ];
            for (x0, b) in cases {
                let added: Vec<f32> = x0.iter().zip(&b).map(|(a, b)| a + b).collect();
                let mut x = x0.clone();
                let m = add_max(&mut x, &b);
                assert_eq!(bits(&x), bits(&added), "len {len}");
                assert_eq!(m.to_bits(), max(&added).to_bits(), "len {len}");
                assert_eq!(first_index_of(&x, m), x.iter().position(|&v| v == m), "len {len}");
                assert_eq!(first_index_of(&x, 1e9), None);
                let (mut y, mut d) = (x.clone(), vec![0.5f32; len]);
                scale_accumulate(&mut y, 0.3, &mut d);
                let want: Vec<f32> = x.iter().map(|v| v * 0.3).collect();
                assert_eq!(bits(&y), bits(&want));
                assert_eq!(bits(&d), bits(&want.iter().map(|v| 0.5 + v).collect::<Vec<_>>()));
            }
        }
    }
}
