//! A matrix of 1- or 2-bit weights with one f32 scale per row: W[j, i] = c_j · b_ji with
//! b ∈ {−1, +1} (bc, bwn, lab) or {−1, 0, +1} (tc, twn, lat), kept as bit planes and multiplied
//! without unpacking to f32:
//!   y_j = c_j · (2 · Σ_{i: sign_ji = 1} x_i − Σ_{i: nonzero_ji = 1} x_i)
//! (a binary matrix's nonzero plane is all ones, so its second sum is Σ x). The planes are
//! row-major, a row of `cols` bits padded to whole bytes, bit (i mod 8) of byte ⌊i/8⌋ — least
//! significant first — is column i. `sign` is 1 for +1, 0 for −1 and for 0; `nonzero` is 1
//! where the weight is not 0.
//!
//! The masked sums run as AVX-512 masked adds driven by the bits (16 lanes per two bytes), as
//! AVX2 compares of a broadcast byte against the lanes' bits (8 lanes per byte), or portably.

use crate::tensor::{Simd, simd};

#[derive(Clone, Debug, PartialEq)]
pub struct PackedMatrix {
    pub rows: usize,
    pub cols: usize,
    /// Bytes per row of a plane: ⌈cols / 8⌉.
    pub row_bytes: usize,
    pub sign: Vec<u8>,
    /// None for a binary matrix (every weight is ±1).
    pub nonzero: Option<Vec<u8>>,
    /// c_j, the scale of row j (the quantizer's α, with weight norm's g_j/‖Q(W)_j‖ folded in).
    pub scale: Vec<f32>,
}

impl PackedMatrix {
    /// Pack a matrix of codes b ∈ {−1, 0, +1} (rows × cols, row-major) with row scales. For a
    /// binary matrix (`ternary` false) a 0 is stored as +1; returns how many were.
    pub fn pack(codes: &[i8], rows: usize, cols: usize, scale: Vec<f32>, ternary: bool) -> (PackedMatrix, usize) {
        assert_eq!(codes.len(), rows * cols);
        assert_eq!(scale.len(), rows);
        let row_bytes = cols.div_ceil(8);
        let mut sign = vec![0u8; rows * row_bytes];
        let mut nonzero = vec![0u8; rows * row_bytes];
        let mut zeros_as_plus = 0;
        for r in 0..rows {
            for c in 0..cols {
                let (byte, bit) = (r * row_bytes + c / 8, 1u8 << (c % 8));
                match codes[r * cols + c] {
                    1 => {
                        sign[byte] |= bit;
                        nonzero[byte] |= bit;
                    }
                    -1 => nonzero[byte] |= bit,
                    0 if ternary => {}
                    0 => {
                        zeros_as_plus += 1;
                        sign[byte] |= bit;
                        nonzero[byte] |= bit;
                    }
                    v => panic!("code {v} is not −1, 0 or +1"),
                }
            }
        }
        let nonzero = ternary.then_some(nonzero);
        (PackedMatrix { rows, cols, row_bytes, sign, nonzero, scale }, zeros_as_plus)
    }

    /// Bits per weight stored.
    pub fn bits(&self) -> u32 {
        if self.nonzero.is_some() { 2 } else { 1 }
    }

    /// The weight W[r, c] = c_r · b_rc (for tests and the one-hot input's column gather).
    pub fn get(&self, r: usize, c: usize) -> f32 {
        let (byte, bit) = (r * self.row_bytes + c / 8, 1u8 << (c % 8));
        let nz = self.nonzero.as_ref().is_none_or(|n| n[byte] & bit != 0);
        let s = if !nz {
            0.0
        } else if self.sign[byte] & bit != 0 {
            1.0
        } else {
            -1.0
        };
        s * self.scale[r]
    }

    /// out[j] (+)= Σ_i W[j, i] · x[i] for every row j.
    pub fn matvec(&self, x: &[f32], out: &mut [f32], accumulate: bool) {
        assert_eq!(x.len(), self.cols);
        assert_eq!(out.len(), self.rows);
        let total: f32 = if self.nonzero.is_none() { x.iter().sum() } else { 0.0 };
        for (j, o) in out.iter_mut().enumerate() {
            let row = j * self.row_bytes..(j + 1) * self.row_bytes;
            let plus = masked_sum(&self.sign[row.clone()], x);
            let nz = match &self.nonzero {
                Some(n) => masked_sum(&n[row], x),
                None => total,
            };
            let y = self.scale[j] * (2.0 * plus - nz);
            *o = if accumulate { *o + y } else { y };
        }
    }
}

/// Σ x_i over the set bits of `bits` (bit i of byte i/8, least significant first).
pub fn masked_sum(bits: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: `simd()` found the features these copies are compiled for.
        Simd::Avx512 => return unsafe { masked_sum_avx512(bits, x) },
        Simd::Avx2 => return unsafe { masked_sum_avx2(bits, x) },
        Simd::Base => {}
    }
    masked_sum_portable(bits, x)
}

/// The portable copy: every set bit of each byte, lowest first.
pub fn masked_sum_portable(bits: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (k, &byte) in bits.iter().enumerate() {
        let base = 8 * k;
        let mut b = byte;
        while b != 0 {
            let i = b.trailing_zeros() as usize;
            if base + i < x.len() {
                acc[i] += x[base + i];
            }
            b &= b - 1;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn masked_sum_avx512(bits: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    let full = n / 16;
    let mut acc = _mm512_setzero_ps();
    for k in 0..full {
        let mask = u16::from_le_bytes([bits[2 * k], bits[2 * k + 1]]);
        // SAFETY: 16·k + 16 ≤ n floats are readable.
        let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(16 * k)) };
        acc = _mm512_mask_add_ps(acc, mask, acc, v);
    }
    let mut s = _mm512_reduce_add_ps(acc);
    for i in 16 * full..n {
        if bits[i / 8] & (1 << (i % 8)) != 0 {
            s += x[i];
        }
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn masked_sum_avx2(bits: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    let full = n / 8;
    let lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let mut acc = _mm256_setzero_ps();
    for (k, &byte) in bits.iter().enumerate().take(full) {
        let b = _mm256_set1_epi32(byte as i32);
        let m = _mm256_cmpeq_epi32(_mm256_and_si256(b, lanes), lanes);
        // SAFETY: 8·k + 8 ≤ n floats are readable.
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * k)) };
        acc = _mm256_add_ps(acc, _mm256_and_ps(v, _mm256_castsi256_ps(m)));
    }
    let mut lane = [0.0f32; 8];
    // SAFETY: `lane` holds 8 floats.
    unsafe { _mm256_storeu_ps(lane.as_mut_ptr(), acc) };
    let mut s: f32 = lane.iter().sum();
    for i in 8 * full..n {
        if bits[i / 8] & (1 << (i % 8)) != 0 {
            s += x[i];
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_blocks() {
        // binary 2 × 3, scales 0.5 and 2: [[+1, −1, +1], [−1, −1, 0→+1]]
        let (m, zeros) = PackedMatrix::pack(&[1, -1, 1, -1, -1, 0], 2, 3, vec![0.5, 2.0], false);
        assert_eq!(zeros, 1, "the exactly-zero weight is stored as +1 and counted");
        assert_eq!((m.bits(), m.row_bytes, m.sign.clone()), (1, 1, vec![0b101, 0b100]));
        let mut y = [0.0; 2];
        m.matvec(&[1.0, 2.0, 3.0], &mut y, false);
        assert_eq!(y, [0.5 * (1.0 - 2.0 + 3.0), 2.0 * (-1.0 - 2.0 + 3.0)]);
        // ternary 1 × 4: [+1, 0, −1, +1] · [1, 10, 100, 1000] = 1 − 100 + 1000
        let (t, _) = PackedMatrix::pack(&[1, 0, -1, 1], 1, 4, vec![1.0], true);
        assert_eq!((t.bits(), t.sign.clone(), t.nonzero.clone()), (2, vec![0b1001], Some(vec![0b1101])));
        let mut y = [5.0];
        t.matvec(&[1.0, 10.0, 100.0, 1000.0], &mut y, true);
        assert_eq!(y, [5.0 + 901.0]);
        assert_eq!((t.get(0, 0), t.get(0, 1), t.get(0, 2)), (1.0, 0.0, -1.0));
    }

    #[test]
    fn every_copy_matches_the_f32_path_on_random_blocks() {
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for (rows, cols, ternary) in
            [(37, 1, false), (5, 13, true), (64, 100, false), (33, 515, true), (16, 2048, false)]
        {
            let codes: Vec<i8> =
                (0..rows * cols).map(|_| (next() % 3) as i8 - 1).map(|c| if ternary { c } else { c | 1 }).collect();
            let scale: Vec<f32> = (0..rows).map(|_| (next() % 1000) as f32 / 500.0).collect();
            let x: Vec<f32> = (0..cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
            let (m, _) = PackedMatrix::pack(&codes, rows, cols, scale.clone(), ternary);
            let mut y = vec![0.0; rows];
            m.matvec(&x, &mut y, false);
            for j in 0..rows {
                let want: f64 = (0..cols).map(|i| codes[j * cols + i] as f64 * scale[j] as f64 * x[i] as f64).sum();
                assert!(
                    (y[j] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs() + cols as f64 * 1e-3),
                    "{rows}×{cols} row {j}: {} vs {want}",
                    y[j]
                );
            }
            // the three copies of the masked sum agree (to f32 rounding of their orders)
            let row = &m.sign[..m.row_bytes];
            let p = masked_sum_portable(row, &x);
            assert!((masked_sum(row, &x) - p).abs() <= 1e-4 * (1.0 + p.abs()), "{rows}×{cols}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is there.
                let a = unsafe { masked_sum_avx2(row, &x) };
                assert!((a - p).abs() <= 1e-4 * (1.0 + p.abs()), "avx2 {a} vs {p}");
            }
        }
    }
}

/// The weights a layer's products use: the window's effective f32 matrix (as Wᵀ, (in, G·H), the
/// layout the GEMMs want), or a packed one ((G·H, in), frozen at load for inference).
#[derive(Clone, Copy)]
pub enum WeightsRef<'a, T> {
    Dense(ndarray::ArrayView2<'a, T>),
    Packed(&'a PackedMatrix),
}

impl<T: crate::tensor::Real> WeightsRef<'_, T> {
    /// out (+)= x · Wᵀ for the rows of x (rows, in) → (rows, G·H).
    pub fn product(&self, out: ndarray::ArrayViewMut2<T>, accumulate: bool, x: ndarray::ArrayView2<T>, par: bool) {
        match self {
            WeightsRef::Dense(w_t) => crate::tensor::gemm_with(out, accumulate, x, *w_t, T::one(), par),
            WeightsRef::Packed(m) => {
                let mut out = out;
                for (o, xr) in out.rows_mut().into_iter().zip(x.rows()) {
                    let (o, xr) = (o.into_slice().expect("contiguous rows"), xr.to_slice().expect("contiguous rows"));
                    m.matvec(as_f32(xr), as_f32_mut(o), accumulate);
                }
            }
        }
    }

    /// out[n] = column ids[n] of W (a one-hot input's product: a row gather of Wᵀ).
    pub fn gather(&self, mut out: ndarray::ArrayViewMut2<T>, ids: &[u32]) {
        match self {
            WeightsRef::Dense(w_t) => {
                for (mut row, &id) in out.outer_iter_mut().zip(ids) {
                    row.assign(&w_t.row(id as usize));
                }
            }
            WeightsRef::Packed(m) => {
                for (mut row, &id) in out.outer_iter_mut().zip(ids) {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = T::r(m.get(j, id as usize) as f64);
                    }
                }
            }
        }
    }
}

/// Packed weights are an inference format of f32 models: the engine's f64 (gradient checks)
/// never meets them.
fn as_f32<T: 'static>(x: &[T]) -> &[f32] {
    assert_eq!(std::any::TypeId::of::<T>(), std::any::TypeId::of::<f32>(), "packed weights run in f32");
    // SAFETY: T is f32 (checked above), so the slice's layout is that of [f32].
    unsafe { &*(x as *const [T] as *const [f32]) }
}

fn as_f32_mut<T: 'static>(x: &mut [T]) -> &mut [f32] {
    assert_eq!(std::any::TypeId::of::<T>(), std::any::TypeId::of::<f32>(), "packed weights run in f32");
    // SAFETY: T is f32 (checked above), so the slice's layout is that of [f32].
    unsafe { &mut *(x as *mut [T] as *mut [f32]) }
}
