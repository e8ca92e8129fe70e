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
    let [s] = lane_sums([x], zero, |_, v| f(v));
    s
}

/// `lane_sum` of N slices of one length, f(i, x) for slice i: each slice's lanes and tail in
/// `lane_sum`'s order (so each result has its bits), the N folds side by side — a short
/// slice's sum is bound by the latency of its fold (~20 dependent adds), not by its loads.
/// (Plain loops: `std::array::from_fn`'s closures stayed calls inside `#[target_feature]`
/// kernels.)
#[inline(always)]
fn lane_sums<T: Copy, A: Copy + std::ops::Add<Output = A> + std::ops::AddAssign + std::iter::Sum, const N: usize>(
    xs: [&[T]; N],
    zero: A,
    f: impl Fn(usize, T) -> A,
) -> [A; N] {
    let n = xs[0].len();
    debug_assert!(xs.iter().all(|x| x.len() == n), "lane_sums: slices of one length");
    let body = n / LANES * LANES;
    let mut acc = [[zero; LANES]; N];
    for i in 0..N {
        for c in xs[i][..body].chunks_exact(LANES) {
            for l in 0..LANES {
                acc[i][l] += f(i, c[l]);
            }
        }
    }
    let mut out = [zero; N];
    for i in 0..N {
        out[i] = acc[i].iter().copied().sum::<A>() + xs[i][body..n].iter().map(|&v| f(i, v)).sum::<A>();
    }
    out
}

/// `sum` of each of N slices of one length, side by side (`lane_sums`).
#[inline(always)]
pub fn sums<T: Real, const N: usize>(xs: [&[T]; N]) -> [T; N] {
    lane_sums(xs, T::zero(), |_, v| v)
}

/// `sum_sq_dev` of each of N slices of one length about its own m, side by side.
#[inline(always)]
pub fn sums_sq_dev<T: Real, const N: usize>(xs: [&[T]; N], m: [T; N]) -> [T; N] {
    lane_sums(xs, T::zero(), |i, v| (v - m[i]) * (v - m[i]))
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

/// `lane_sum` as it was written for one slice (16 lanes over whole chunks, each lane in order,
/// the lanes then the tail folded by `Sum`), in f32: the order the side-by-side sums and the
/// layer-norm statistics keep, which tests compare them against.
#[cfg(test)]
pub(crate) fn one_at_a_time(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().copied().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
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

    /// Sums side by side give each slice's own `sum` and `sum_sq_dev`, bit for bit: lengths
    /// with and without a tail, zeros of both signs (the folds start from −0, as `Sum` does).
    #[test]
    fn side_by_side_sums_match_one_at_a_time() {
        fn check<const N: usize>(len: usize) {
            let data: Vec<Vec<f32>> = (0..N)
                .map(|i| {
                    (0..len)
                        .map(|j| match (i + j) % 7 {
                            0 => -0.0,
                            1 => 0.0,
                            k => ((j * 37 + i * 11) % 23) as f32 * 0.37 - 3.1 + k as f32 * 1e-3,
                        })
                        .collect()
                })
                .collect();
            let xs: [&[f32]; N] = std::array::from_fn(|i| &data[i][..]);
            let m: [f32; N] = std::array::from_fn(|i| 0.3 * i as f32 - 0.5);
            let (s, d) = (sums(xs), sums_sq_dev(xs, m));
            for i in 0..N {
                let dev = |v: f32| (v - m[i]) * (v - m[i]);
                for (got, want) in [(s[i], one_at_a_time(xs[i], |v| v)), (d[i], one_at_a_time(xs[i], dev))] {
                    assert_eq!(got.to_bits(), want.to_bits(), "N {N}, len {len}, slice {i}");
                }
                assert_eq!(sum(xs[i]).to_bits(), s[i].to_bits());
                assert_eq!(sum_sq_dev(xs[i], m[i]).to_bits(), d[i].to_bits());
            }
        }
        for len in [1usize, 4, 15, 16, 17, 100, 650] {
            check::<1>(len);
            check::<2>(len);
            check::<3>(len);
            check::<4>(len);
        }
        // all zeros of one sign: the sign of the sum is the fold's
        let neg = [-0.0f32; 20];
        assert!(sums([&neg[..], &neg[..]])[1].is_sign_negative() == one_at_a_time(&neg, |v| v).is_sign_negative());
    }

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
