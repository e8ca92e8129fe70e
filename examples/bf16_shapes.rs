//! Target 4 of the speed issue: which bf16 kernel runs the recurrence's per-step shapes faster
//! than the f32 panels of src/tensor/panel_gemm.rs? Three columns, one thread, best of 30, B
//! packed once (±1 weights, exact in bf16; h rounded to bf16 at each product, as the option
//! does):
//!   f32   the library's f32 panels (`PanelMatrix`, `Precision::F32`: faer's arithmetic);
//!   bf16  a tile on AVX512-BF16's dot product (vdpbf16ps: 32 bf16 products into 16 f32 sums
//!         per instruction), written here;
//!   library  the library's bf16 panels (`Precision::Bf16`, src/tensor/amx.rs), on the unit
//!         `bf16_products()` names: AMX (tdpbf16ps, a 16×32 · 32×16 bf16 tile product into a
//!         16×16 f32 tile per instruction) where the CPU and the kernel allow it, AVX512-BF16
//!         (this file's tile, in the library's blocking) on AMD CPUs.
//! and the largest relative difference of each bf16 result to f32's.
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

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("bf16_shapes: x86-64 only");
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use ndarray::Array2;
    use qlstm::tensor::{PanelMatrix, Precision, bf16_products};
    if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
        eprintln!("bf16_shapes: this CPU has no AVX512-BF16; nothing to measure");
        return;
    }
    // the library's bf16 panels, on whichever unit this CPU runs them (AMX, or AVX512-BF16 on AMD)
    let unit = bf16_products();
    if let Err(why) = unit {
        println!("library bf16 panels: not measured: {why}");
    }
    let best_of = |f: &mut dyn FnMut()| {
        (0..30)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let max_rel = |x: &Array2<f32>, y: &Array2<f32>| {
        x.iter().zip(y).map(|(x, y)| ((x - y).abs() / x.abs().max(1.0)) as f64).fold(0.0, f64::max)
    };
    for &(m, k, n) in
        &[(32usize, 512usize, 2048usize), (32, 2048, 512), (10, 650, 2600), (10, 300, 1200), (50, 100, 400)]
    {
        let a = Array2::from_shape_fn((m, k), |(i, j)| (((i * k + j) * 7919) % 1000) as f32 / 1000.0 - 0.5);
        let b = Array2::from_shape_fn((k, n), |(i, j)| if ((i * n + j) * 104729) % 3 == 0 { 1.0 } else { -1.0 });
        let flops = 2.0 * (m * k * n) as f64;
        let mut c = Array2::<f32>::zeros((m, n));
        let mut f32_panels = PanelMatrix::default();
        let rhs = f32_panels.pack(b.view(), m, Precision::F32);
        let t_f32 = best_of(&mut || rhs.product(c.view_mut(), false, a.view(), false));

        // vdpbf16ps over whole panels (n rounded down to 32 columns; the FLOPs counted alike)
        let pb = pack_bf16(b.as_slice().unwrap(), k, n);
        let kp = k.div_ceil(2);
        let mut abf = vec![0u16; m * kp * 2];
        let mut c2 = Array2::<f32>::zeros((m, n));
        let blocks = m.div_ceil(12);
        let t_dp = best_of(&mut || unsafe {
            for r in 0..m {
                a_to_bf16(a.row(r).as_slice().unwrap(), &mut abf[r * kp * 2..r * kp * 2 + k]);
            }
            let ap = abf.as_ptr() as *const u32;
            for p in 0..n / NR {
                let mut r = 0;
                for bl in 0..blocks {
                    let rows = (m - r) / (blocks - bl);
                    let (panel, cp) = (pb.as_ptr().add(p * kp * NR), c2.as_mut_ptr().add(r * n + p * NR));
                    macro_rules! go { ($($x:literal)*) => { match rows { $($x => tile_bf16::<$x>(ap.add(r * kp), kp, panel, kp, cp, n),)* _ => unreachable!() } } }
                    go!(1 2 3 4 5 6 7 8 9 10 11 12);
                    r += rows;
                }
            }
        });
        let whole = n / NR * NR;
        let cw = c.slice(ndarray::s![.., ..whole]).to_owned();
        let dp_rel = max_rel(&cw, &c2.slice(ndarray::s![.., ..whole]).to_owned());
        print!(
            "{m}x{k}.{k}x{n}: f32 {:.1} GFLOP/s, bf16 {:.1} GFLOP/s ({:.2}x), max rel diff {dp_rel:.2e}",
            flops / t_f32 / 1e9,
            flops / t_dp / 1e9,
            t_f32 / t_dp
        );
        if let Ok(unit) = unit {
            let mut bf16_panels = PanelMatrix::default();
            let rhs = bf16_panels.pack(b.view(), m, Precision::Bf16);
            let mut c3 = Array2::<f32>::zeros((m, n));
            let t_amx = best_of(&mut || rhs.product(c3.view_mut(), false, a.view(), false));
            print!(
                "; library {unit:?} {:.1} GFLOP/s ({:.2}x), max rel diff {:.2e}",
                flops / t_amx / 1e9,
                t_f32 / t_amx,
                max_rel(&c, &c3)
            );
        }
        println!();
    }
}
