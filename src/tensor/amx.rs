//! `[train] gemm_precision = "bf16"`: the recurrence's per-step products (and the weight
//! gradients' and softmax's) on AMX tiles or AVX512-BF16's dot product, with h (or ∂L/∂z) and
//! W_h rounded to bf16 and the sums kept in f32.
//!
//! Which unit (`Bf16Unit`): `examples/bf16_shapes.rs` ran the per-step shapes three ways. On an
//! Intel Xeon (results/bench/bf16_shapes_intel_2026-12-06.txt) AVX512-BF16's dot product
//! (vdpbf16ps, 32 products per instruction) reached 0.56–0.96 of our f32 FMA tile — it issues
//! on one port where FMAs issue on two — while AMX's tile product (tdpbf16ps, a 16×32 · 32×16
//! bf16 product into a 16×16 f32 tile) ran 2.6–6.3× faster than it. On an AMD Zen 4
//! (results/bench/bf16_shapes_amd_zen4_2026-12-06.txt), where a 512-bit FMA and vdpbf16ps both
//! take one pass of the two 256-bit pipes, the dot product ran 1.99–2.06× our f32 tile. So the
//! option runs on AMX where the CPU and kernel grant it, on AVX512-BF16 on AMD CPUs, and is
//! refused elsewhere with the reason. The two units round the operands alike; they add the
//! products in different orders (a tile adds 32 per instruction, vdpbf16ps two), so their sums
//! differ in the last bits.
//!
//! Layout. B (k × n) is packed once per window, as the f32 panels are, into 32-column panels of
//! k-pairs: pair row q of a panel holds 32 u32 lanes, lane j = (B[2q][j] low half, B[2q+1][j]
//! high half), which is the "VNNI" layout tdpbf16ps reads a 16-pair × 16-column tile of; k is
//! zero-padded to whole 32-term tiles. A is rounded into a bf16 copy (rows kpad wide) at each
//! product. C's tiles are loaded (accumulating) or zeroed, take k/32 tile products, and are
//! stored: a 32-row block uses tmm0–3 for C (2 × 2 tiles of 16 × 16), tmm4–5 for A, tmm6–7 for
//! B; the last block of fewer rows is configured to its height. A panel with fewer than 32
//! columns (the last, when n is not a multiple of 32) goes through a 32-wide copy of its C.
//!
//! Tile instructions are written as inline assembly: Rust's AMX intrinsics are not stable. The
//! AVX512-BF16 path (`dot_block`) reads the same packed B and bf16 A, block by block, with the
//! same depth chunks, in register tiles of ≤ 11 rows × 32 columns.

use std::cell::RefCell;

use super::aligned::Aligned;

crate::names::named_enum! {
    /// Precision of the products the option covers (`[train] gemm_precision`).
    pub enum Precision {
        /// f32 operands, f32 sums (bit-identical to faer where the panels apply).
        F32 = "f32",
        /// bf16 operands, f32 sums, on AMX (recurrent, weight-gradient and softmax products).
        Bf16 = "bf16",
    }
}

/// Columns per panel (two 16-column tiles), as the f32 panels.
pub(super) const NR: usize = 32;

/// Pair rows (two depths each) of a depth chunk in `panels`: 32 rows of A's chunk are 32 KB.
const DEPTH_CHUNK: usize = 256;

/// Whether this process can run AMX-BF16 products, or why not. Asked once: the CPU must have
/// AMX-TILE, AMX-BF16 and AVX512-BF16 (for rounding A), and Linux must grant the process the
/// tile data (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), which needs kernel ≥ 5.16.
/// `QLSTM_SIMD` below `avx512` rules it out too (to see a run refuse bf16 on any machine).
fn amx_bf16() -> Result<(), &'static str> {
    static STATE: std::sync::OnceLock<Result<(), &'static str>> = std::sync::OnceLock::new();
    *STATE.get_or_init(detect)
}

/// The unit that runs the bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Unit {
    /// AMX tiles (`tdpbf16ps`): Intel Xeon 4th generation and later.
    Amx,
    /// AVX512-BF16's dot product (`vdpbf16ps`) on an AMD CPU, where it runs at the rate of an
    /// f32 FMA and so doubles the products' multiply-adds per cycle (Zen 4: 2.0–2.06× our f32
    /// tile on every per-step shape, results/bench/bf16_shapes_amd_zen4_2026-12-06.txt). On the
    /// Intel host it issued on one port where FMAs issue on two and lost to f32 (0.61–0.91×),
    /// so Intel CPUs without AMX are refused.
    Avx512Bf16,
}

/// Whether this process can run bf16 products, on which unit, or why not (asked once).
pub fn bf16_products() -> Result<Bf16Unit, &'static str> {
    static STATE: std::sync::OnceLock<Result<Bf16Unit, &'static str>> = std::sync::OnceLock::new();
    *STATE.get_or_init(|| match amx_bf16() {
        Ok(()) => Ok(Bf16Unit::Amx),
        Err(amx_why) => detect_avx512_bf16().map(|()| Bf16Unit::Avx512Bf16).map_err(|_| amx_why),
    })
}

/// AVX512-BF16 in use on an AMD CPU (the vendor where its dot product was measured to pay).
#[cfg(target_arch = "x86_64")]
fn detect_avx512_bf16() -> Result<(), &'static str> {
    use std::arch::x86_64::__cpuid;
    if super::simd() != super::Simd::Avx512 || !is_x86_feature_detected!("avx512bf16") {
        return Err("no AVX512-BF16 in use");
    }
    let leaf0 = __cpuid(0);
    let vendor = [leaf0.ebx, leaf0.edx, leaf0.ecx].map(u32::to_le_bytes).concat();
    if vendor != b"AuthenticAMD" {
        return Err("AVX512-BF16 measured slower than f32 on Intel CPUs");
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_avx512_bf16() -> Result<(), &'static str> {
    Err("AVX512-BF16 is an x86-64 feature")
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Result<(), &'static str> {
    use std::arch::x86_64::__cpuid_count;
    if super::simd() != super::Simd::Avx512 {
        return Err("AVX-512 is not in use (no AVX-512, or QLSTM_SIMD caps it)");
    }
    let leaf7 = __cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    if !(amx_tile && amx_bf16) {
        return Err(
            "this CPU has neither AMX-BF16 (Intel Xeon 4th generation, Sapphire Rapids, or later) nor AVX512-BF16 on an AMD CPU (Zen 4 or later)",
        );
    }
    if !is_x86_feature_detected!("avx512bf16") {
        return Err("this CPU has AMX but no AVX512-BF16");
    }
    unsafe extern "C" {
        fn syscall(num: i64, ...) -> i64;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    // SAFETY: arch_prctl with this request only changes which state the kernel saves for us.
    if unsafe { syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } != 0 {
        return Err("the Linux kernel did not grant AMX's tile data to this process (kernel 5.16 or later needed)");
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Result<(), &'static str> {
    Err("AMX-BF16 is an x86-64 feature")
}

/// f32 → bf16, rounding to nearest even (NaN stays NaN).
pub(super) fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// k rounded up to whole tile depths (32 terms) for AMX, to whole pairs for AVX512-BF16 (whose
/// dot product takes one pair at a time: MNIST's k = 100 would do 28 % more work at 128).
pub(super) fn padded_depth(k: usize) -> usize {
    match bf16_products() {
        Ok(Bf16Unit::Avx512Bf16) => k.next_multiple_of(2),
        _ => k.next_multiple_of(32),
    }
}

/// B (k × n, any strides) packed as the module comment lays out, into `out`.
pub(super) fn pack(out: &mut Aligned<u32>, b: ndarray::ArrayView2<f32>) {
    let (k, n) = b.dim();
    let kp = padded_depth(k) / 2;
    let panels = n.div_ceil(NR);
    #[cfg(target_arch = "x86_64")]
    if b.strides()[1] == 1 && bf16_products().is_ok() {
        // rows contiguous (∂L/∂z for the weight gradients, W_hᵀ): two rows at a time, 16 lanes
        // per vector, every lane of every pair row written (zeros past n and past k), so a
        // buffer of the right size needs no clearing first (∂L/∂z's is 26 MB on PTB-char)
        let out = out.resized(panels * kp * NR);
        let rows = k.div_ceil(2);
        for q in 0..rows {
            let lo = b.row(2 * q);
            let hi = (2 * q + 1 < k).then(|| b.row(2 * q + 1));
            // SAFETY: bf16_products() checked AVX-512; rows of n floats; out holds every panel's pair row q.
            unsafe { pack_pair_row(lo.as_ptr(), hi.map(|r| r.as_ptr()), n, out.as_mut_ptr().add(q * NR), kp * NR) };
        }
        for p in 0..panels {
            out[(p * kp + rows) * NR..(p + 1) * kp * NR].fill(0);
        }
        return;
    }
    let out = out.zeroed(panels * kp * NR);
    if b.strides()[0] == 1 && k > 1 {
        // B = Wᵀ of a row-major W (n × k): a pair of B's rows is two neighbours in a row of W,
        // so each row of W, rounded, is column j of every pair row
        let mut pairs = vec![0u16; 2 * kp];
        for (j, w) in b.columns().into_iter().enumerate() {
            round_row(w.as_slice().expect("columns of B contiguous"), &mut pairs[..k]);
            let (p, jj) = (j / NR, j % NR);
            for (q, pair) in pairs.chunks_exact(2).enumerate() {
                out[(p * kp + q) * NR + jj] = pair[0] as u32 | ((pair[1] as u32) << 16);
            }
        }
        return;
    }
    let at = |kk: usize, j: usize| b[[kk, j]];
    for p in 0..panels {
        for q in 0..kp {
            let row = &mut out[(p * kp + q) * NR..(p * kp + q + 1) * NR];
            for (jj, lane) in row.iter_mut().enumerate() {
                let j = p * NR + jj;
                if j >= n {
                    break;
                }
                let lo = if 2 * q < k { bf16(at(2 * q, j)) as u32 } else { 0 };
                let hi = if 2 * q + 1 < k { bf16(at(2 * q + 1, j)) as u32 } else { 0 };
                *lane = lo | (hi << 16);
            }
        }
    }
}

/// Pair row q of every panel from rows 2q (`lo`) and 2q + 1 (`hi`, zeros when past k) of B:
/// panel p's 32 lanes at `out + p·panel_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_pair_row(lo: *const f32, hi: Option<*const f32>, n: usize, out: *mut u32, panel_stride: usize) {
    use std::arch::x86_64::*;
    // bf16 rounding as `bf16()` does it, on 16 lanes: (b + 0x7fff + ((b >> 16) & 1)) >> 16
    let round = |v: __m512i| {
        let odd = _mm512_and_si512(_mm512_srli_epi32(v, 16), _mm512_set1_epi32(1));
        _mm512_add_epi32(_mm512_add_epi32(v, _mm512_set1_epi32(0x7fff)), odd)
    };
    let high_half = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let mut j = 0;
    while j < n.div_ceil(NR) * NR {
        let lanes = n.saturating_sub(j).min(16);
        let mask = super::simd::lane_mask(lanes);
        // SAFETY: masked loads read the row's remaining `lanes` floats only; the store writes
        // 16 lanes of this panel's pair row (zero beyond n, as the padding wants).
        unsafe {
            let l = round(_mm512_maskz_loadu_epi32(mask, lo.add(j) as *const i32));
            let h = match hi {
                Some(h) => _mm512_and_si512(round(_mm512_maskz_loadu_epi32(mask, h.add(j) as *const i32)), high_half),
                None => _mm512_setzero_si512(),
            };
            let v = _mm512_maskz_mov_epi32(mask, _mm512_or_si512(_mm512_srli_epi32(l, 16), h));
            let (p, jj) = (j / NR, j % NR);
            _mm512_storeu_si512(out.add(p * panel_stride + jj) as *mut __m512i, v);
        }
        j += 16;
    }
}

thread_local! {
    /// A in bf16, rows `kpad` wide (the product's caller's thread), and C's 32-column copy for
    /// a partial panel (each thread's own).
    static A16: RefCell<Aligned<u16>> = const { RefCell::new(Aligned::new()) };
    static C32: RefCell<Aligned<f32>> = const { RefCell::new(Aligned::new()) };
}

/// A (m × k) rounded to bf16 into a thread-local copy with rows `kpad` wide (zeros past k),
/// handed to `f`.
pub(super) fn with_bf16_rows<R>(a: ndarray::ArrayView2<f32>, f: impl FnOnce(&[u16]) -> R) -> R {
    let (m, k) = a.dim();
    let kpad = padded_depth(k);
    A16.with_borrow_mut(|buf| {
        // every row's first k values are written below: only the padding needs zeros (no
        // clearing of the whole copy at every step)
        let buf = buf.resized(m * kpad);
        for row in buf.chunks_exact_mut(kpad) {
            row[k..].fill(0);
        }
        #[cfg(target_arch = "x86_64")]
        if a.strides()[0] == 1 && a.ncols() > 1 && bf16_products().is_ok() {
            // A = Xᵀ of a row-major X (Hᵀ for dW_h): 16 rows of X at a time, a column of them
            // gathered per row of A, while those rows sit in L1
            let ld = a.strides()[1] as usize;
            // SAFETY: bf16_products() checked AVX-512; X = a.t() is k × m with row stride ld.
            unsafe { transpose_rounded(a.as_ptr(), m, k, ld, buf.as_mut_ptr(), kpad) };
            return f(buf);
        }
        for (row, out) in a.rows().into_iter().zip(buf.chunks_exact_mut(kpad)) {
            match row.as_slice() {
                Some(x) => round_row(x, &mut out[..k]),
                None => row.iter().zip(out.iter_mut()).for_each(|(&v, o)| *o = bf16(v)),
            }
        }
        f(buf)
    })
}

/// out[i·kpad + kk] = bf16(x[kk·ld + i]) for i < m, kk < k: X (k × m, row stride ld) transposed
/// and rounded. Whole 16 × 16 blocks are loaded as 16 rows of X, transposed in registers and
/// stored as 16 rows of out, the blocks of one 16-row strip of out in order (so out's rows are
/// written front to back); the last m % 16 rows gather their columns, 16 values at a time. A
/// gather for every row (the first version) cost 8.5 % of a PTB-word bf16 step on Zen 4, where
/// gathers are slow and each wrote 32 bytes into another of out's 10000 rows. The same values
/// either way: vcvtneps2bf16 for every whole 16 of depth, `bf16` for the rest.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn transpose_rounded(x: *const f32, m: usize, k: usize, ld: usize, out: *mut u16, kpad: usize) {
    use std::arch::x86_64::*;
    let (whole_m, whole_k) = (m / 16 * 16, k / 16 * 16);
    // SAFETY (whole function): X has k rows of ≥ m values at stride ld; out has m rows of kpad.
    unsafe {
        let store = |v: __m512, at: *mut u16| {
            let h = _mm512_cvtneps_pbh(v);
            _mm256_storeu_si256(at as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(h));
        };
        for i0 in (0..whole_m).step_by(16) {
            for k0 in (0..whole_k).step_by(16) {
                let mut r = [_mm512_setzero_ps(); 16];
                for (j, r) in r.iter_mut().enumerate() {
                    *r = _mm512_loadu_ps(x.add((k0 + j) * ld + i0));
                }
                super::simd::transpose16(&mut r);
                for (j, &r) in r.iter().enumerate() {
                    store(r, out.add((i0 + j) * kpad + k0));
                }
            }
        }
        let idx = _mm512_mullo_epi32(
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
            _mm512_set1_epi32(ld as i32),
        );
        for k0 in (0..whole_k).step_by(16) {
            for i in whole_m..m {
                store(_mm512_i32gather_ps::<4>(idx, x.add(k0 * ld + i)), out.add(i * kpad + k0));
            }
        }
        for kk in whole_k..k {
            for i in 0..m {
                *out.add(i * kpad + kk) = bf16(*x.add(kk * ld + i));
            }
        }
    }
}

fn round_row(x: &[f32], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if bf16_products().is_ok() {
        // SAFETY: bf16_products() checked AVX512-BF16.
        return unsafe { round_row_avx512(x, out) };
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = bf16(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn round_row_avx512(x: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    let whole = x.len() / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: i + 16 ≤ len of both.
        unsafe {
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr().add(i)));
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(h));
        }
    }
    for i in whole..x.len() {
        out[i] = bf16(x[i]);
    }
}

/// C (m × panels' columns, row stride `ldc` floats, `n` columns in all from panel `first`)
/// (+)= A16 (m × kpad bf16) · the panels `range` of `pairs` (kp pair rows each). Runs on the
/// calling thread: on AMX the tile configuration is per thread, loaded here and released at
/// the end; on AVX512-BF16 (`dot_block`) there is none.
///
/// # Safety
/// `bf16_products()` is Ok; c is valid for m rows of the range's columns at stride ldc.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn panels(
    pairs: &[u32],
    kp: usize,
    n: usize,
    a16: &[u16],
    m: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    range: std::ops::Range<usize>,
) {
    let kpad = 2 * kp;
    let amx = bf16_products() == Ok(Bf16Unit::Amx);
    let first = range.start;
    let full_blocks = m / 32;
    let tail = m % 32;
    // (blocks b0..b1, their configuration): the 32-row blocks, then the tail; no allocation,
    // this runs at every step
    let (top, bottom) = if tail > 16 { (16, tail - 16) } else { (tail, 0) };
    let passes = [
        (0, full_blocks, TileConfig::new(16, 16)),
        (full_blocks, full_blocks + usize::from(tail > 0), TileConfig::new(top as u8, bottom as u8)),
    ];
    // Depth in chunks of DEPTH_CHUNK pair rows, each run over every panel before the next:
    // a 32-row block of A then stays in L1 (32 KB) across the panels instead of streaming
    // from L2 once per panel, which made 32×2048·2048×512 (char's backward step) run at 3.5×
    // f32 where 32×512·512×2048 runs at 5.5×. C's f32 partial sums go through memory between
    // chunks, exactly: the same additions in the same order.
    let chunk = if kpad > 2 * DEPTH_CHUNK { DEPTH_CHUNK } else { kp };
    // the last panel's columns through a 32-wide copy when it has fewer than NR
    let last = range.end - 1;
    let last_cols = (n - last * NR).min(NR);
    C32.with_borrow_mut(|buf| {
        let buf = if last_cols < NR { buf.zeroed(m * NR) } else { buf.zeroed(0) };
        if last_cols < NR && accumulate {
            for r in 0..m {
                // SAFETY: C's row r holds the last panel's `last_cols` columns.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        c.add(r * ldc + (last - first) * NR),
                        buf[r * NR..].as_mut_ptr(),
                        last_cols,
                    )
                };
            }
        }
        for (b0, b1, cfg) in passes.into_iter().filter(|p| p.0 < p.1) {
            if amx {
                // SAFETY: AMX is granted (caller); the config is a valid palette-1 configuration.
                unsafe { cfg.load() };
            }
            let rows_in = |b: usize| (m - 32 * b).min(32);
            for k0 in (0..kp).step_by(chunk) {
                let kn = chunk.min(kp - k0);
                let acc = accumulate || k0 > 0;
                for p in range.clone() {
                    let panel = pairs[(p * kp + k0) * NR..(p + 1) * kp * NR].as_ptr();
                    for b in b0..b1 {
                        let a = a16[32 * b * kpad + 2 * k0..].as_ptr();
                        let (cp, ld) = if p == last && last_cols < NR {
                            (buf[32 * b * NR..].as_mut_ptr(), NR)
                        } else {
                            // SAFETY: C's rows 32b.. of this panel's columns.
                            (unsafe { c.add(32 * b * ldc + (p - first) * NR) }, ldc)
                        };
                        // SAFETY: rows × kn pair columns of A16 from row 32b, depth 2·k0; the
                        // panel's kn × NR lanes from pair row k0; C (or its copy) as above.
                        unsafe {
                            if amx {
                                tile_block(rows_in(b), a, kpad, panel, kn, cp, ld, acc)
                            } else {
                                dot_block(rows_in(b), a, kpad, panel, kn, cp, ld, acc)
                            }
                        };
                    }
                }
            }
        }
        if last_cols < NR {
            for r in 0..m {
                // SAFETY: as the copy in.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        buf[r * NR..].as_ptr(),
                        c.add(r * ldc + (last - first) * NR),
                        last_cols,
                    )
                };
            }
        }
    });
    if amx {
        // SAFETY: leaves the tiles unconfigured, as the thread found them.
        unsafe { release() };
    }
}

/// Palette 1: tmm0–1 (C's upper tiles) and tmm4 (A's upper rows) `top` rows; tmm2–3 and tmm5
/// the lower ones, `bottom` rows (0: unused); tmm6–7 (B) 16 pair rows; every row 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(top: u8, bottom: u8) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let rows = [top, top, bottom, bottom, top, bottom, 16, 16];
        for (t, &r) in rows.iter().enumerate() {
            if r > 0 {
                c[16 + 2 * t] = 64;
                c[48 + t] = r;
            }
        }
        TileConfig(c)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn load(&self) {
        // SAFETY: a valid configuration; the caller has AMX.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly)) };
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn load(&self) {}
}

#[cfg(target_arch = "x86_64")]
unsafe fn release() {
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn release() {}

/// One block of ≤ 32 rows (the loaded configuration's heights) of one panel.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_block(
    rows: usize,
    a: *const u16,
    kpad: usize,
    panel: *const u32,
    kp: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::asm;
    let (lda_b, ldc_b, ldb_b) = (kpad * 2, ldc * 4, NR * 4);
    // SAFETY (whole function): the caller's bounds; the tiles read and write only the rows the
    // configuration gives them (rows ≤ 16 per tile), 64 bytes per row.
    unsafe {
        let c1 = c.add(16);
        if rows > 16 {
            let c2 = c.add(16 * ldc);
            let c3 = c2.add(16);
            if accumulate {
                asm!(
                    "tileloadd tmm0, [{c0} + {ldc}*1]",
                    "tileloadd tmm1, [{c1} + {ldc}*1]",
                    "tileloadd tmm2, [{c2} + {ldc}*1]",
                    "tileloadd tmm3, [{c3} + {ldc}*1]",
                    c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, ldc = in(reg) ldc_b,
                    options(nostack, readonly),
                );
            } else {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            }
            for s in 0..kp / 16 {
                let a0 = a.add(s * 32);
                let a1 = a0.add(16 * kpad);
                let b0 = panel.add(s * 16 * NR);
                let b1 = b0.add(16);
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                    lda = in(reg) lda_b, ldb = in(reg) ldb_b,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c0} + {ldc}*1], tmm0",
                "tilestored [{c1} + {ldc}*1], tmm1",
                "tilestored [{c2} + {ldc}*1], tmm2",
                "tilestored [{c3} + {ldc}*1], tmm3",
                c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, ldc = in(reg) ldc_b,
                options(nostack),
            );
        } else {
            if accumulate {
                asm!(
                    "tileloadd tmm0, [{c0} + {ldc}*1]",
                    "tileloadd tmm1, [{c1} + {ldc}*1]",
                    c0 = in(reg) c, c1 = in(reg) c1, ldc = in(reg) ldc_b,
                    options(nostack, readonly),
                );
            } else {
                asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
            }
            for s in 0..kp / 16 {
                let a0 = a.add(s * 32);
                let b0 = panel.add(s * 16 * NR);
                let b1 = b0.add(16);
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    a0 = in(reg) a0, b0 = in(reg) b0, b1 = in(reg) b1,
                    lda = in(reg) lda_b, ldb = in(reg) ldb_b,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c0} + {ldc}*1], tmm0",
                "tilestored [{c1} + {ldc}*1], tmm1",
                c0 = in(reg) c, c1 = in(reg) c1, ldc = in(reg) ldc_b,
                options(nostack),
            );
        }
    }
}

/// `tile_block`'s contract on AVX512-BF16 (`Bf16Unit::Avx512Bf16`): ≤ 32 rows of one panel, as
/// row groups of ≤ `DOT_ROWS` in near-equal heights (32: 11 + 11 + 10), each a register tile of
/// 2 · rows accumulators (the panel's 32 columns) over the kp pair rows: per pair row, the
/// panel's two vectors of 16 pairs and a broadcast of each A row's pair (`vdpbf16ps`: the two
/// products of a pair added into the f32 sum).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_block(
    rows: usize,
    a: *const u16,
    kpad: usize,
    panel: *const u32,
    kp: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let groups = rows.div_ceil(DOT_ROWS);
    let mut r0 = 0;
    for g in 0..groups {
        let r = (rows - r0).div_ceil(groups - g);
        macro_rules! dispatch {
            ($($n:literal)*) => {
                match r {
                    // SAFETY: the caller's bounds, for rows r0..r0 + r of the block.
                    $($n => unsafe { dot_rows::<$n>(a.add(r0 * kpad), kpad, panel, kp, c.add(r0 * ldc), ldc, accumulate) },)*
                    _ => unreachable!("a row group has 1..=DOT_ROWS rows"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11);
        r0 += r;
    }
}

/// Rows per register tile of `dot_block`: 2 · 11 accumulators, two B vectors and a broadcast
/// (25 of the 32 zmm registers), as the f32 tile's 12 rows but one broadcast register spare.
const DOT_ROWS: usize = 11;

/// R rows of A's bf16 copy (row stride kpad) times one panel's kp pair rows into C's R × 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_rows<const R: usize>(
    a: *const u16,
    kpad: usize,
    panel: *const u32,
    kp: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole function): the caller's bounds: R rows of kpad ≥ 2·kp bf16 values, kp pair
    // rows of NR lanes, R rows of 32 floats of C at stride ldc.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm512_loadu_ps(c.add(r * ldc));
                acc[1] = _mm512_loadu_ps(c.add(r * ldc + 16));
            }
        }
        let mut b = panel;
        for q in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const __m512i));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16) as *const __m512i));
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = (a.add(r * kpad + 2 * q) as *const u32).read_unaligned();
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
            b = b.add(NR);
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc), acc[0]);
            _mm512_storeu_ps(c.add(r * ldc + 16), acc[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_block(_: usize, _: *const u16, _: usize, _: *const u32, _: usize, _: *mut f32, _: usize, _: bool) {
    unreachable!("bf16 panels are packed only where bf16_products() is Ok")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_block(_: usize, _: *const u16, _: usize, _: *const u32, _: usize, _: *mut f32, _: usize, _: bool) {
    unreachable!("bf16 panels are packed only where bf16_products() is Ok")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transposed copy of A = Xᵀ (whole 16 × 16 blocks in registers, the last rows by
    /// gathers, the last depths one by one) holds bf16(X[kk][i]) at row i, column kk, for every
    /// shape's edges: m and k multiples of 16 or not, X's rows longer than m, padding untouched.
    #[test]
    fn transposed_rounding_puts_every_value_in_its_place() {
        if let Err(why) = bf16_products() {
            eprintln!("no AVX512-BF16 in use here: {why}");
            return;
        }
        for &(m, k, ld) in &[(16usize, 16usize, 16usize), (37, 45, 40), (100, 700, 103), (15, 17, 15), (48, 3, 50)] {
            let x: Vec<f32> = (0..k * ld).map(|v| ((v * 7919) % 2003) as f32 / 997.0 - 1.0 + 1e-3).collect();
            let kpad = k.next_multiple_of(32);
            let mut out = vec![0xffffu16; m * kpad];
            // SAFETY: bf16_products() is Ok (AVX-512 with AVX512-BF16); the buffers' sizes as named.
            unsafe { transpose_rounded(x.as_ptr(), m, k, ld, out.as_mut_ptr(), kpad) };
            for i in 0..m {
                for kk in 0..kpad {
                    let want = if kk < k { bf16(x[kk * ld + i]) } else { 0xffff };
                    assert_eq!(out[i * kpad + kk], want, "({m}, {k}, ld {ld}): row {i}, depth {kk}");
                }
            }
        }
    }
}
