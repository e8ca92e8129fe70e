//! Run-time choice of the compiled copy of a hot elementwise kernel (baseline x86-64, AVX2 + FMA,
//! AVX-512), and the two macros that compile a kernel three times.

/// The widest vector extension of this CPU that the hot elementwise kernels are compiled for
/// (ordered: a level includes the ones before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// The build target's baseline (SSE2 on default x86-64).
    Base,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F + VL (with AVX2 and FMA).
    Avx512,
}

/// Detected once (`is_x86_feature_detected!` caches too, but several lookups per call add up
/// in the per-row cell kernels). The environment variable `QLSTM_SIMD` = `base`, `avx2` or
/// `avx512` caps it (to compare the compiled copies, or to rule one out when debugging).
#[inline]
pub fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("QLSTM_SIMD").as_deref() {
            Ok("base") => Simd::Base,
            Ok("avx2") => Simd::Avx2,
            _ => Simd::Avx512,
        };
        detected_simd().min(cap)
    })
}

fn detected_simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
            return Simd::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Simd::Avx2;
        }
    }
    Simd::Base
}

/// The hot elementwise kernels (cell, normalizations, softmax, Adam) are compiled three times
/// and chosen at run time: LLVM vectorizes a loop to the width of the features enabled on the
/// function it ends up in, and the default x86-64 target has neither AVX2 nor FMA (4 lanes).
/// `simd_kernel!` wraps a free generic function: its body becomes an `#[inline(always)]` inner
/// function, inlined into an AVX-512 and an AVX2 + FMA copy. Keep the slices a kernel loops
/// over among its arguments (or in a struct argument of slices): slices made inside from
/// ndarray views may alias as far as LLVM knows, and the loop stays scalar. (A closure cannot
/// be forced inline on stable Rust; passed to a `#[target_feature]` function it stayed a call
/// to baseline code, 2.3× slower on the MNIST cell.)
macro_rules! simd_kernel {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$T:ident: Real>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name<$T: Real>($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn imp<$T: Real>($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            unsafe fn avx512<$T: Real>($($a: $t),*) $(-> $r)? {
                imp($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<$T: Real>($($a: $t),*) $(-> $r)? {
                imp($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            match $crate::tensor::simd() {
                // SAFETY: `simd()` found the features these copies are compiled for.
                $crate::tensor::Simd::Avx512 => return unsafe { avx512($($a),*) },
                $crate::tensor::Simd::Avx2 => return unsafe { avx2($($a),*) },
                $crate::tensor::Simd::Base => {}
            }
            imp($($a),*)
        }
    };
}
pub(crate) use simd_kernel;

/// `simd_kernel!` for a method: `pub fn name(&mut self, args) => imp, avx512_copy, avx2_copy`
/// defines `name`, which calls the `#[inline(always)]` method `imp` through the copy for this
/// CPU (the copies are named because `macro_rules!` cannot make identifiers). The receiver and
/// `self` are passed on to the inner rule as tokens so that hygiene sees one `self`.
macro_rules! simd_method {
    ($(#[$m:meta])* $vis:vis fn $name:ident(&mut self $(, $a:ident: $t:ty)* $(,)?) $(-> $r:ty)? => $imp:ident, $v512:ident, $v256:ident) => {
        $crate::tensor::simd_method!(@gen [&mut self] self $(#[$m])* $vis $name ($($a: $t),*) ($($r)?) $imp $v512 $v256);
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident(&self $(, $a:ident: $t:ty)* $(,)?) $(-> $r:ty)? => $imp:ident, $v512:ident, $v256:ident) => {
        $crate::tensor::simd_method!(@gen [&self] self $(#[$m])* $vis $name ($($a: $t),*) ($($r)?) $imp $v512 $v256);
    };
    (@gen [$($recv:tt)*] $sf:tt $(#[$m:meta])* $vis:vis $name:ident ($($a:ident: $t:ty),*) ($($r:ty)?) $imp:ident $v512:ident $v256:ident) => {
        $(#[$m])*
        $vis fn $name($($recv)* $(, $a: $t)*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            match $crate::tensor::simd() {
                // SAFETY: `simd()` found the features these copies are compiled for.
                $crate::tensor::Simd::Avx512 => return unsafe { $sf.$v512($($a),*) },
                $crate::tensor::Simd::Avx2 => return unsafe { $sf.$v256($($a),*) },
                $crate::tensor::Simd::Base => {}
            }
            $sf.$imp($($a),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn $v512($($recv)* $(, $a: $t)*) $(-> $r)? {
            $sf.$imp($($a),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $v256($($recv)* $(, $a: $t)*) $(-> $r)? {
            $sf.$imp($($a),*)
        }
    };
}
pub(crate) use simd_method;

/// The first `n` of 16 lanes (all 16 from n = 16 on): the mask of a vector's partial load or
/// store at a row's end.
pub(crate) fn lane_mask(n: usize) -> u16 {
    if n >= 16 { u16::MAX } else { ((1u32 << n) - 1) as u16 }
}

/// Sixteen rows of 16 floats transposed in registers: r[j][i] ← r[i][j] (32-bit, then 64-bit
/// interleaves within 128-bit lanes, then two exchanges of 128-bit lanes).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn transpose16(r: &mut [std::arch::x86_64::__m512; 16]) {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let pd = _mm512_castps_pd;
    for i in 0..4 {
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
    }
    for i in 0..2 {
        for j in 0..4 {
            t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(r[8 * i + j], r[8 * i + j + 4]);
            t[8 * i + j + 4] = _mm512_shuffle_f32x4::<0xdd>(r[8 * i + j], r[8 * i + j + 4]);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]);
        r[j + 8] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[j + 8]);
    }
}

/// Up to 16 × 16 floats of a block whose columns are contiguous runs, written out as rows:
/// column c < `cols` is the run of `depths` ≤ 16 floats at `src + c·cs` (loaded whole when
/// `depths` is 16, masked otherwise), the block is transposed in registers, and row d <
/// `depths` is stored at `dst + d·ds`: 16 floats when `pad` (the columns from `cols` on as
/// zeros), else its `cols` (masked only when fewer than 16).
///
/// # Safety
/// The `cols` runs and the `depths` rows (16 floats each when `pad`) lie inside their buffers.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_runs16(
    src: *const f32,
    cs: usize,
    depths: usize,
    cols: usize,
    dst: *mut f32,
    ds: usize,
    pad: bool,
) {
    use std::arch::x86_64::*;
    let mut v = [_mm512_setzero_ps(); 16];
    for (c, v) in v.iter_mut().enumerate().take(cols) {
        // SAFETY: run c lies inside the source (the caller's contract).
        let at = unsafe { src.add(c * cs) };
        *v = if depths == 16 {
            unsafe { _mm512_loadu_ps(at) }
        } else {
            unsafe { _mm512_maskz_loadu_ps(lane_mask(depths), at) }
        };
    }
    transpose16(&mut v);
    for (d, v) in v.iter().enumerate().take(depths) {
        // SAFETY: row d lies inside the destination (the caller's contract).
        let at = unsafe { dst.add(d * ds) };
        if pad || cols == 16 {
            unsafe { _mm512_storeu_ps(at, *v) };
        } else {
            unsafe { _mm512_mask_storeu_ps(at, lane_mask(cols), *v) };
        }
    }
}

/// The first `n` of 8 lanes as an AVX2 mask (the sign bit of each 32-bit lane), for
/// `_mm256_maskload_ps` / `_mm256_maskstore_ps` at a row's end.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn lane_mask8(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// Eight rows of 8 floats transposed in registers: r[j][i] ← r[i][j] (32-bit interleaves,
/// 64-bit shuffles within 128-bit lanes, then an exchange of 128-bit lanes).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn transpose8(r: &mut [std::arch::x86_64::__m256; 8]) {
    use std::arch::x86_64::*;
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm256_setzero_ps(); 8];
    for i in 0..2 {
        u[4 * i] = _mm256_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm256_shuffle_ps::<0xee>(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm256_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm256_shuffle_ps::<0xee>(t[4 * i + 1], t[4 * i + 3]);
    }
    for j in 0..4 {
        r[j] = _mm256_permute2f128_ps::<0x20>(u[j], u[j + 4]);
        r[j + 4] = _mm256_permute2f128_ps::<0x31>(u[j], u[j + 4]);
    }
}

/// `transpose_runs16` in 8 × 8 blocks (masked loads and stores only at a block's edges: AMD's
/// masked AVX2 stores are microcoded).
///
/// # Safety
/// As `transpose_runs16`, with 8-float rows when `pad`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn transpose_runs8(
    src: *const f32,
    cs: usize,
    depths: usize,
    cols: usize,
    dst: *mut f32,
    ds: usize,
    pad: bool,
) {
    use std::arch::x86_64::*;
    let mut v = [_mm256_setzero_ps(); 8];
    for (c, v) in v.iter_mut().enumerate().take(cols) {
        // SAFETY: run c lies inside the source (the caller's contract).
        let at = unsafe { src.add(c * cs) };
        *v = if depths == 8 {
            unsafe { _mm256_loadu_ps(at) }
        } else {
            unsafe { _mm256_maskload_ps(at, lane_mask8(depths)) }
        };
    }
    transpose8(&mut v);
    for (d, v) in v.iter().enumerate().take(depths) {
        // SAFETY: row d lies inside the destination (the caller's contract).
        let at = unsafe { dst.add(d * ds) };
        if pad || cols == 8 {
            unsafe { _mm256_storeu_ps(at, *v) };
        } else {
            unsafe { _mm256_maskstore_ps(at, lane_mask8(cols), *v) };
        }
    }
}
