//! Target 4 of the speed issue, measured before building it: does AVX512-BF16's dot product
//! (vdpbf16ps: 32 bf16 products into 16 f32 sums per instruction) run the per-step shapes
//! faster than the f32 FMA register tile of src/tensor/panel_gemm.rs? Both kernels side by side
//! on B packed once (±1 weights, exact in bf16; h rounded to bf16 per product, as the option
//! would), one thread, best of 30; and the largest relative difference of the bf16 result.
//! A third column runs the same product on AMX (tdpbf16ps: a 16×32 · 32×16 bf16 tile product
//! into a 16×16 f32 tile per instruction), where the CPU and kernel allow it: A padded to 16
//! rows and 32 terms, B packed in the same panels, C written by tiles; the padded work is
//! counted as waste, not as FLOPs.
//! usage: cargo run --release --example bf16_shapes   (needs a CPU with AVX512-BF16)
#![cfg_attr(not(target_arch = "x86_64"), allow(unused))]
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::time::Instant;

const NR: usize = 32;

/// f32 → bf16, round to nearest even (finite inputs).
fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// B (k×n row-major f32) in panels of 32 columns of k-pairs: panel p, pair q holds 32 u32
/// lanes, lane j = (b[2q][j] in the low half, b[2q+1][j] in the high half), as vdpbf16ps
/// pairs them.
fn pack_bf16(b: &[f32], k: usize, n: usize) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    let mut out = vec![0u32; panels * kp * NR];
    for p in 0..panels {
        for q in 0..kp {
            for jj in 0..NR {
                let j = p * NR + jj;
                if j >= n {
                    continue;
                }
                let lo = bf16(b[(2 * q) * n + j]) as u32;
                let hi = if 2 * q + 1 < k { bf16(b[(2 * q + 1) * n + j]) as u32 } else { 0 };
                out[(p * kp + q) * NR + jj] = lo | (hi << 16);
            }
        }
    }
    out
}

fn pack_f32(b: &[f32], k: usize, n: usize) -> Vec<f32> {
    let panels = n.div_ceil(NR);
    let mut out = vec![0f32; panels * k * NR];
    for p in 0..panels {
        for kk in 0..k {
            for jj in 0..NR {
                let j = p * NR + jj;
                if j < n {
                    out[(p * k + kk) * NR + jj] = b[kk * n + j];
                }
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
unsafe fn a_to_bf16(a: &[f32], out: &mut [u16]) {
    let n = a.len() / 16 * 16;
    let mut i = 0;
    while i < n {
        let v = unsafe { _mm512_loadu_ps(a.as_ptr().add(i)) };
        let h: __m256bh = _mm512_cvtneps_pbh(v);
        unsafe {
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(h))
        };
        i += 16;
    }
    for j in n..a.len() {
        out[j] = bf16(a[j]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_bf16<const R: usize>(
    a: *const u32,
    lda_pairs: usize,
    panel: *const u32,
    kp: usize,
    c: *mut f32,
    ldc: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    unsafe {
        let mut b = panel;
        for q in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const __m512i));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16) as *const __m512i));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda_pairs + q) as i32));
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_f32<const R: usize>(a: *const f32, lda: usize, panel: *const f32, k: usize, c: *mut f32, ldc: usize) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    unsafe {
        let mut b = panel;
        for kk in 0..k {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * lda + kk));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
            b = b.add(NR);
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc), acc[0]);
            _mm512_storeu_ps(c.add(r * ldc + 16), acc[1]);
        }
    }
}

/// Linux gives a process AMX's tile data only on request (arch_prctl ARCH_REQ_XCOMP_PERM for
/// XFEATURE_XTILEDATA); false where the kernel or CPU refuses.
#[cfg(target_arch = "x86_64")]
fn amx_permitted() -> bool {
    unsafe extern "C" {
        fn syscall(num: i64, ...) -> i64;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" amx_bf16"))
        && unsafe { syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
}

/// Palette 1, eight tiles of 16 rows × 64 bytes: tmm0–3 the 32×32 f32 block of C (2×2 tiles),
/// tmm4–5 two 16×32 bf16 tiles of A, tmm6–7 two 16-pair × 16-column tiles of B.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// `rows` (≤ 16) rows in the tiles of C and A: a product with fewer than 16 rows runs one
/// row of tiles, configured to its height, instead of padding A.
#[cfg(target_arch = "x86_64")]
fn tile_config(rows: u8) -> TileConfig {
    let mut c = [0u8; 64];
    c[0] = 1;
    for t in 0..8 {
        c[16 + 2 * t] = 64; // bytes per row
        c[48 + t] = if t < 6 { rows } else { 16 }; // C and A: the product's rows; B: 16 pairs
    }
    TileConfig(c)
}

/// C[rows×32] = A[rows×K] · B[K×32] for rows ≤ 16 (the config's height): tmm0–1 and tmm4.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_row(a: *const u16, lda_bytes: usize, panel: *const u32, kp: usize, c: *mut f32, ldc_bytes: usize) {
    use std::arch::asm;
    unsafe {
        asm!("tilezero tmm0", "tilezero tmm1");
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
                lda = in(reg) lda_bytes, ldb = in(reg) NR * 4,
                options(nostack, readonly),
            );
        }
        let c1 = c.add(16);
        asm!(
            "tilestored [{c0} + {ldc}*1], tmm0",
            "tilestored [{c1} + {ldc}*1], tmm1",
            c0 = in(reg) c, c1 = in(reg) c1, ldc = in(reg) ldc_bytes,
            options(nostack),
        );
    }
}

/// C[32×32] = A[32×K] · B[K×32] on AMX. a: bf16 rows of lda_bytes; panel: pairs of 32 u32
/// lanes as pack_bf16 lays them out; kp a multiple of 16 pairs.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_block(a: *const u16, lda_bytes: usize, panel: *const u32, kp: usize, c: *mut f32, ldc_bytes: usize) {
    use std::arch::asm;
    unsafe {
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3");
        for s in 0..kp / 16 {
            let a0 = a.add(s * 32);
            let a1 = a0.byte_add(16 * lda_bytes);
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
                lda = in(reg) lda_bytes, ldb = in(reg) NR * 4,
                options(nostack, readonly),
            );
        }
        let c1 = c.add(16);
        let c2 = c.byte_add(16 * ldc_bytes);
        let c3 = c2.add(16);
        asm!(
            "tilestored [{c0} + {ldc}*1], tmm0",
            "tilestored [{c1} + {ldc}*1], tmm1",
            "tilestored [{c2} + {ldc}*1], tmm2",
            "tilestored [{c3} + {ldc}*1], tmm3",
            c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, ldc = in(reg) ldc_bytes,
            options(nostack),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("bf16_shapes: x86-64 only");
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
        eprintln!("bf16_shapes: this CPU has no AVX512-BF16; nothing to measure");
        return;
    }
    let amx = amx_permitted();
    if !amx {
        println!("AMX: not available to this process (CPU flag amx_bf16 or the kernel's permission missing)");
    }
    for &(m, k, n) in
        &[(32usize, 512usize, 2048usize), (32, 2048, 512), (10, 650, 2600), (10, 300, 1200), (50, 100, 400)]
    {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| if (i * 104729) % 3 == 0 { 1.0 } else { -1.0 }).collect();
        let mut c = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        let pf = pack_f32(&b, k, n);
        let pb = pack_bf16(&b, k, n);
        let kp = k.div_ceil(2);
        let mut abf = vec![0u16; m * kp * 2];
        let blocks = m.div_ceil(12);
        let flops = 2.0 * (m * k * n) as f64;
        let mut best_f = f64::MAX;
        let mut best_b = f64::MAX;
        for _ in 0..30 {
            let t = Instant::now();
            unsafe {
                for p in 0..n / NR {
                    let mut r = 0;
                    for bl in 0..blocks {
                        let rows = (m - r) / (blocks - bl);
                        macro_rules! go { ($($x:literal)*) => { match rows { $($x => tile_f32::<$x>(a.as_ptr().add(r*k), k, pf.as_ptr().add(p*k*NR), k, c.as_mut_ptr().add(r*n+p*NR), n),)* _ => unreachable!() } } }
                        go!(1 2 3 4 5 6 7 8 9 10 11 12);
                        r += rows;
                    }
                }
            }
            best_f = best_f.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            unsafe {
                // A to bf16, rows padded to kp pairs
                for r in 0..m {
                    a_to_bf16(&a[r * k..(r + 1) * k], &mut abf[r * kp * 2..r * kp * 2 + k]);
                }
                let ap = abf.as_ptr() as *const u32;
                for p in 0..n / NR {
                    let mut r = 0;
                    for bl in 0..blocks {
                        let rows = (m - r) / (blocks - bl);
                        macro_rules! go { ($($x:literal)*) => { match rows { $($x => tile_bf16::<$x>(ap.add(r*kp), kp, pb.as_ptr().add(p*kp*NR), kp, c2.as_mut_ptr().add(r*n+p*NR), n),)* _ => unreachable!() } } }
                        go!(1 2 3 4 5 6 7 8 9 10 11 12);
                        r += rows;
                    }
                }
            }
            best_b = best_b.min(t.elapsed().as_secs_f64());
        }
        let mut best_x = f64::NAN;
        let mut c3 = vec![0f32; m * n];
        if amx {
            // K padded to whole 32-term tiles (zeros), rows to 16 or to whole 32-row blocks
            let kpad = k.next_multiple_of(32);
            let kp2 = kpad / 2;
            let mut bpad = vec![0f32; kpad * n];
            bpad[..k * n].copy_from_slice(&b);
            let pb2 = pack_bf16(&bpad, kpad, n);
            let mpad = if m <= 16 { m } else { m.next_multiple_of(32) };
            let mut a2 = vec![0u16; mpad * kpad];
            let mut c2p = vec![0f32; mpad * n];
            let cfg = tile_config(if m <= 16 { m as u8 } else { 16 });
            unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly)) };
            best_x = f64::MAX;
            for _ in 0..30 {
                let t = Instant::now();
                unsafe {
                    for r in 0..m {
                        a_to_bf16(&a[r * k..(r + 1) * k], &mut a2[r * kpad..r * kpad + k]);
                    }
                    for p in 0..n / NR {
                        let panel = pb2.as_ptr().add(p * kp2 * NR);
                        if m <= 16 {
                            amx_row(a2.as_ptr(), kpad * 2, panel, kp2, c2p.as_mut_ptr().add(p * NR), n * 4);
                        } else {
                            for rb in (0..mpad).step_by(32) {
                                amx_block(
                                    a2.as_ptr().add(rb * kpad),
                                    kpad * 2,
                                    panel,
                                    kp2,
                                    c2p.as_mut_ptr().add(rb * n + p * NR),
                                    n * 4,
                                );
                            }
                        }
                    }
                }
                best_x = best_x.min(t.elapsed().as_secs_f64());
            }
            unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
            c3.copy_from_slice(&c2p[..m * n]);
        }
        // only whole panels were timed (2600 and 1200 are not multiples of 32); compare those
        let maxrel = c.iter().zip(&c2).map(|(x, y)| ((x - y).abs() / x.abs().max(1.0)) as f64).fold(0.0, f64::max);
        print!(
            "{m}x{k}.{k}x{n}: f32 {:.1} GFLOP/s, bf16 {:.1} GFLOP/s ({:.2}x), max rel diff {maxrel:.2e}",
            flops / best_f / 1e9,
            flops / best_b / 1e9,
            best_f / best_b
        );
        if amx {
            let whole = n / NR * NR;
            let maxrel = (0..m)
                .flat_map(|r| (0..whole).map(move |j| r * n + j))
                .map(|i| ((c[i] - c3[i]).abs() / c[i].abs().max(1.0)) as f64)
                .fold(0.0, f64::max);
            print!("; AMX {:.1} GFLOP/s ({:.2}x), max rel diff {maxrel:.2e}", flops / best_x / 1e9, best_f / best_x);
        }
        println!();
    }
}
