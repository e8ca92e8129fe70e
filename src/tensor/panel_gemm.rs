//! The per-step product of the recurrence, C (+)= A·B with B fixed for a whole window (W_hᵀ in
//! the forward, W_h in the backward), on a right-hand side packed once per window.
//!
//! faer packs (or strides through) B at every call, and the recurrence calls it twice per time
//! step with the same B: 32×512·512×2048 on PTB-char's half batch. Packed once into column
//! panels of `NR` = 32 (k × 32, contiguous), every step streams B sequentially, two zmm loads
//! per k, while `MR` ≤ 12 rows of A are broadcast against them into 2·MR accumulators.
//!
//! The arithmetic is faer's, operation for operation, so that switching to this kernel leaves
//! every trained number as it was: on AVX-512 and on AVX2, faer's f32 kernel (private-gemm-x86) sums each
//! output over k in blocks of 512 (its `kc`), each block a chain of FMAs started from zero in
//! k order, and adds each block's sum to C in block order (the first block replaces C when not
//! accumulating). `tests` check bit-identity against `gemm` on the shapes the layers use.
//! On AVX2 (no AVX-512) the same panels run through 3 × 32 register tiles (`tile_avx2`): the
//! per-step products, and of the window's only the weight gradients (`window_applies`).
//! Elsewhere (f64, CPUs without AVX2, tiny or degenerate shapes that faer sends down other
//! paths) the product goes to `gemm` on the unpacked B.
//!
//! With `Precision::Bf16` the panels hold B in bf16 pairs instead and the products run on AMX
//! tiles or AVX512-BF16 dot products (`amx.rs`): every shape, no faer order to keep.
//!
//! The window's products (the input projection, the weight gradients, the softmax's three)
//! run on the same register tile through `window_product`, which `gemm` picks for f32 shapes
//! of at least `WINDOW_MIN_ROWS` rows: B packed per call a cache-sized block at a time, A's
//! rows read in place or (a transposed view) packed depth-major. Same arithmetic as faer,
//! 1.04–1.39× its speed on those shapes (examples/gemm_shapes.rs, Intel host, two threads).

use ndarray::{ArrayView2, ArrayViewMut2};

use super::aligned::Aligned;
use super::amx::{self, Precision};
use super::simd::lane_mask;
use super::{Real, Simd, gemm_with, simd, threads};

/// Columns per panel: two 16-lane vectors.
const NR: usize = 32;
/// Rows of A per register tile: 2·MR accumulators, two B vectors and a broadcast fit the 32 zmm.
const MR: usize = 12;
/// faer's depth block (AVX-512 and AVX2 alike): each output's sum restarts from zero every KC terms.
const KC: usize = 512;
/// Per-step right-hand sides larger than this (W_hᵀ: char 4 MB, word2 6.8 MB; not MNIST's
/// 160 KB) do not stay in a core's L2 between steps, so their tiles prefetch the panel
/// `PREFETCH_DEPTHS` depths ahead of the FMAs: alone (examples/gemm_shapes.rs, one thread)
/// char's half-batch step product 1.0–1.2× and word2's 1.15–1.4× faster, MNIST's slower;
/// in a whole two-thread step char 1.00–1.07× (4 rounds), word2 0.93–1.03 (none).
const PREFETCH_MIN_BYTES: usize = 1 << 20;
const PREFETCH_DEPTHS: usize = 16;
/// faer takes products of at most 16³ multiply-adds down another path (nano-gemm), with another
/// summation order; those stay with faer.
const MIN_MACS: usize = 16 * 16 * 16;
/// Products from this many multiply-adds split their panels over two threads when asked to
/// (as `gemm`'s PARALLEL_MIN_MACS).
const PARALLEL_MIN_MACS: usize = 1 << 24;

/// B (k × n) in column panels of `NR`: panel p holds B[0..k, NR·p..NR·p + NR] row by row, the
/// last panel zero-padded. Empty where the kernel does not apply (the product then uses B's
/// view): f64, no AVX2, or a batch too small to gain from it. With `Precision::Bf16`, the
/// same panels in bf16 pairs for the bf16 unit (`amx.rs`).
#[derive(Default)]
pub struct PanelMatrix {
    k: usize,
    n: usize,
    precision: Precision,
    data: Aligned<f32>,
    pairs: Aligned<u32>,
}

/// The fixed right-hand side of a window's per-step products: its view, and its panels when
/// they were packed.
#[derive(Clone, Copy)]
pub struct FixedRhs<'a, T> {
    pub view: ArrayView2<'a, T>,
    panels: Option<&'a PanelMatrix>,
}

impl<'a, T: Real> FixedRhs<'a, T> {
    /// B without panels: every product goes to `gemm`.
    pub fn plain(view: ArrayView2<'a, T>) -> Self {
        FixedRhs { view, panels: None }
    }

    /// c (+)= a · B: through the panels when there are some and the shape is one faer runs in
    /// its blocked kernel, else through `gemm`. `par`: may use all threads.
    pub fn product(&self, c: ArrayViewMut2<T>, accumulate: bool, a: ArrayView2<T>, par: bool) {
        let (m, k) = a.dim();
        let n = self.view.ncols();
        let par = par && threads() > 1 && m * n * k >= PARALLEL_MIN_MACS;
        // a long inner dimension with a small output: `gemm` sums it in parts, one per thread
        let split_k = par && k >= 8 * (m + n) && m * n <= 1 << 18;
        match self.panels {
            Some(p) if p.precision == Precision::Bf16 => {
                debug_assert_eq!((p.k, p.n), (k, n));
                p.product_bf16(as_f32_mut(c), accumulate, as_f32(a), par)
            }
            Some(p) if kernel_applies(m, k, n) && !split_k && rows_contiguous(&a) && rows_contiguous_mut(&c) => {
                debug_assert_eq!((p.k, p.n), (k, n));
                p.product(as_f32_mut(c), accumulate, as_f32(a), par)
            }
            _ => gemm_with(c, accumulate, a, self.view, T::one(), par),
        }
    }
}

/// Shapes faer sends to its blocked kernel (not to nano-gemm, a matrix-vector or a rank-1 path).
fn kernel_applies(m: usize, k: usize, n: usize) -> bool {
    m >= 2 && n >= 2 && k >= 2 && m * n * k > MIN_MACS
}

fn rows_contiguous<T>(a: &ArrayView2<T>) -> bool {
    a.ncols() <= 1 || a.strides()[1] == 1
}

fn rows_contiguous_mut<T>(a: &ArrayViewMut2<T>) -> bool {
    a.ncols() <= 1 || a.strides()[1] == 1
}

impl PanelMatrix {
    /// Whether products of `rows` rows on this CPU and type use panels (so packing pays). bf16
    /// products always do (f32 models on a CPU with a bf16 unit: the run checked it at its start).
    pub fn useful<T: Real>(rows: usize, precision: Precision) -> bool {
        match precision {
            Precision::F32 => is_f32::<T>() && simd() >= Simd::Avx2 && rows >= 2,
            Precision::Bf16 => is_f32::<T>() && amx::bf16_products().is_ok() && rows >= 1,
        }
    }

    /// Whether a bf16 product packed for one use (a window's weight gradient, the softmax's
    /// products) gains: packing reads A (m × k) and B (k × n) once more for 2·m·k·n FLOPs, so
    /// it pays where m·n / (m + n) is large. MNIST's dW_h (100 × 400: 80) on AMX made its bf16
    /// step slower (441–459k vs 519–536k pixels/s, `qlstm bench --config mnist`, one run);
    /// PTB's weight gradients and softmax products (240–520) gain.
    pub fn bf16_pays_per_product(m: usize, n: usize) -> bool {
        m * n >= 128 * (m + n)
    }

    /// c (+)= a·b for a product packed for this one use (a weight gradient, the softmax's): b
    /// packed here and run in bf16 (AMX or AVX512-BF16) where that pays (`bf16_pays_per_product`), else
    /// faer's f32 `gemm`; all threads.
    pub fn gemm_once<T: Real>(
        &mut self,
        precision: Precision,
        c: ArrayViewMut2<T>,
        accumulate: bool,
        a: ArrayView2<T>,
        b: ArrayView2<T>,
    ) {
        let (m, n) = (a.nrows(), b.ncols());
        if precision == Precision::Bf16 && Self::bf16_pays_per_product(m, n) && Self::useful::<T>(m, precision) {
            self.pack(b, m, precision).product(c, accumulate, a, true);
        } else {
            gemm_with(c, accumulate, a, b, T::one(), true);
        }
    }

    /// Pack `b` (k × n, any strides) when `useful::<T>(rows, precision)`; returns the
    /// right-hand side to run the window's products with.
    pub fn pack<'a, T: Real>(&'a mut self, b: ArrayView2<'a, T>, rows: usize, precision: Precision) -> FixedRhs<'a, T> {
        if !Self::useful::<T>(rows, precision) {
            return FixedRhs::plain(b);
        }
        let (k, n) = b.dim();
        let panels = n.div_ceil(NR);
        self.k = k;
        self.n = n;
        self.precision = precision;
        if precision == Precision::Bf16 {
            amx::pack(&mut self.pairs, as_f32(b));
            let this: &'a PanelMatrix = self;
            return FixedRhs { view: b, panels: Some(this) };
        }
        pack_panels(self.data.resized(panels * k * NR), as_f32(b));
        let this: &'a PanelMatrix = self;
        FixedRhs { view: b, panels: Some(this) }
    }

    fn product(&self, mut c: ArrayViewMut2<f32>, accumulate: bool, a: ArrayView2<f32>, par: bool) {
        let panels = self.n.div_ceil(NR);
        if par {
            let half = panels / 2;
            let (c0, c1) = c.view_mut().split_at(ndarray::Axis(1), half * NR);
            rayon::join(|| self.panels(c0, accumulate, a, 0..half), || self.panels(c1, accumulate, a, half..panels));
        } else {
            self.panels(c.view_mut(), accumulate, a, 0..panels);
        }
    }

    /// c (+)= a · B on the bf16 unit: a rounded to bf16 once, the panels split over two threads when
    /// `par`.
    fn product_bf16(&self, mut c: ArrayViewMut2<f32>, accumulate: bool, a: ArrayView2<f32>, par: bool) {
        if !rows_contiguous_mut(&c) {
            // tiles store whole rows: go through a row-major copy (not a layout the layers use)
            let mut tmp = c.to_owned();
            self.product_bf16(tmp.view_mut(), accumulate, a, par);
            c.assign(&tmp);
            return;
        }
        let m = a.nrows();
        let (panels, kp) = (self.n.div_ceil(NR), amx::padded_depth(self.k) / 2);
        amx::with_bf16_rows(a, |a16| {
            let run = |mut c: ArrayViewMut2<f32>, range: std::ops::Range<usize>| {
                let ldc = c.strides()[0] as usize;
                // SAFETY: pack() found bf16_products() Ok; c has m rows of the range's columns.
                unsafe {
                    amx::panels(self.pairs.as_slice(), kp, self.n, a16, m, c.as_mut_ptr(), ldc, accumulate, range)
                }
            };
            if par && panels >= 2 {
                let half = panels / 2;
                let (c0, c1) = c.view_mut().split_at(ndarray::Axis(1), half * NR);
                rayon::join(|| run(c0, 0..half), || run(c1, half..panels));
            } else {
                run(c.view_mut(), 0..panels);
            }
        });
    }

    /// The products of panels `range` into `c`, whose column 0 is the first panel's.
    fn panels(&self, mut c: ArrayViewMut2<f32>, accumulate: bool, a: ArrayView2<f32>, range: std::ops::Range<usize>) {
        let (m, k) = a.dim();
        let (lda, ldc) = (a.strides()[0] as usize, c.strides()[0] as usize);
        let first = range.start;
        let prefetch = self.k * self.n * std::mem::size_of::<f32>() > PREFETCH_MIN_BYTES;
        for p in range {
            let j0 = (p - first) * NR;
            let cols = (self.n - p * NR).min(NR);
            let panel = self.data.as_slice()[p * k * NR..(p + 1) * k * NR].as_ptr();
            // row blocks of near-equal height ≤ MR (32 rows: 11 + 11 + 10, not 12 + 12 + 8). On
            // AVX2 one block of all m rows, which `tile_avx2_split` cuts straight into 3-row
            // tiles (64: 2 × 2 + 20 × 3, 22 passes over the panel); cut into MR blocks first,
            // the 11- and 10-row blocks ran mostly as 2-row tiles (64: 28 passes, each 8 FMAs
            // per 128 B of panel instead of 12): 1.02–1.06× slower on char's, word2's and
            // MNIST's per-step shapes (Zen 3, one thread, 200 interleaved pairs).
            let blocks = if simd() == Simd::Avx2 { 1 } else { m.div_ceil(MR) };
            let mut r = 0;
            for b in 0..blocks {
                let rows = (m - r) / (blocks - b);
                // SAFETY: simd() found AVX-512 or AVX2 (`useful`); the tile reads rows r..r+rows
                // of a (k wide, row stride lda), the panel's k × NR floats, and writes `cols`
                // columns of rows r..r+rows of c (row stride ldc), all inside their views.
                unsafe {
                    let ap = a.as_ptr().add(r * lda);
                    let cp = c.as_mut_ptr().add(r * ldc + j0);
                    tile_dispatch(rows, Tile { a: ap, lda, panel, k, c: cp, ldc, cols, accumulate }, false, prefetch);
                }
                r += rows;
            }
        }
    }
}

/// Columns of B per block of the window product: a depth block's panels (KC × NC floats, 1 MB)
/// stay in a core's L2 while every row tile of A streams them.
const NC: usize = 512;
/// Window products from this many rows (on AVX-512; on AVX2 see `window_applies`) and
/// multiply-adds pack B per call (packing reads B once more: it pays where each panel meets
/// many row tiles).
const WINDOW_MIN_ROWS: usize = 128;
const WINDOW_MIN_MACS: usize = 1 << 22;

/// Whether `window_product` takes a product of this shape and these types: f32 on AVX-512 (on
/// AVX2 only with a transposed A, the weight gradients Xᵀ·dG), unit α, enough rows to amortize
/// packing B (on AVX-512; below), C with contiguous rows (and, as the tile reads them, rows of
/// A and C at non-negative strides). On AVX2 (AMD Zen 3, examples/gemm_shapes.rs, one thread) the kernel
/// ran the weight gradients at 1.1–1.4× faer's speed but the products with a row-major A
/// (X·Wᵀ, dY·W) at 0.85–1.0×: those stay with faer there. The weight gradients take it from
/// any row count there: with 12–120 rows (sequential MNIST's dW_h = Hᵀ·dG, 100 × 78400 · 78400
/// × 400) it ran at 1.0–1.25× faer's speed, one thread, median of 15 (Zen 3, session 19). On
/// AVX-512 the same products below `WINDOW_MIN_ROWS` ran at 0.82–0.96× faer's speed (AMD Zen 4,
/// one thread, medians of 15, two runs: results/bench/window_few_rows_avx512_amd_zen4_2026-12-07.txt),
/// so there they stay with faer.
pub fn window_applies<T: Real>(c: &ArrayViewMut2<T>, a: &ArrayView2<T>, b: &ArrayView2<T>, alpha: T) -> bool {
    c.strides()[0] >= 0 && alpha == T::one() && window_takes(a, b) && rows_contiguous_mut(c)
}

/// `window_applies`' conditions on the operands (into a C of contiguous rows, unit α).
pub(crate) fn window_takes<T: Real>(a: &ArrayView2<T>, b: &ArrayView2<T>) -> bool {
    let ((m, k), n) = (a.dim(), b.ncols());
    let kernel_takes = match simd() {
        Simd::Avx512 => m >= WINDOW_MIN_ROWS,
        Simd::Avx2 => !rows_contiguous(a),
        _ => false,
    };
    a.strides()[0] >= 0 && is_f32::<T>() && kernel_takes && m * n * k >= WINDOW_MIN_MACS && kernel_applies(m, k, n)
}

/// c (+)= a·b for a window-sized product (the input projection, the weight gradients, the
/// softmax's products), blocked for the caches: per column block of `NC` and depth block of
/// `KC`, B's block packed into panels once (L2-resident), A's rows taken `MR` at a time (packed
/// when their elements are not contiguous: a transposed view), every panel run against them.
/// faer's arithmetic exactly (each output: a chain from zero per KC block, blocks added in
/// order), so it replaces `gemm` bit for bit; C's columns (or rows, below) split over two
/// threads when `par`. Call only where `window_applies`.
pub fn window_product<T: Real>(c: ArrayViewMut2<T>, accumulate: bool, a: ArrayView2<T>, b: ArrayView2<T>, par: bool) {
    let (c, a, b) = (as_f32_mut(c), as_f32(a), as_f32(b));
    let (m, n) = (a.nrows(), b.ncols());
    let panels = n.div_ceil(NR);
    // Each thread packs the B columns and the packed A rows it uses: splitting C's columns,
    // both threads pack all of a transposed A (m·k) and half of B (k·n); splitting its rows,
    // half of A and all of B. Rows win for a transposed A with m > n: the weight gradients
    // Xᵀ·dG with few columns (the softmax's dW, 10000 × 300 or 650).
    if par && threads() > 1 && !rows_contiguous(&a) && m > n && m >= 2 * MR {
        let cut = m / 2;
        let (c0, c1) = c.split_at(ndarray::Axis(0), cut);
        let (a0, a1) = a.split_at(ndarray::Axis(0), cut);
        rayon::join(|| window_columns(c0, accumulate, a0, b), || window_columns(c1, accumulate, a1, b));
    } else if par && threads() > 1 && panels >= 2 {
        let cut = panels / 2 * NR;
        let (c0, c1) = c.split_at(ndarray::Axis(1), cut);
        let (b0, b1) = b.split_at(ndarray::Axis(1), cut);
        rayon::join(|| window_columns(c0, accumulate, a, b0), || window_columns(c1, accumulate, a, b1));
    } else {
        window_columns(c, accumulate, a, b);
    }
}

thread_local! {
    /// This thread's packed B block and A row tile (reused: a step allocates nothing).
    static WINDOW_BUFFERS: std::cell::RefCell<(Aligned<f32>, Aligned<f32>)> =
        const { std::cell::RefCell::new((Aligned::new(), Aligned::new())) };
}

/// `window_product` on one thread.
fn window_columns(mut c: ArrayViewMut2<f32>, accumulate: bool, a: ArrayView2<f32>, b: ArrayView2<f32>) {
    let ((m, k), n) = (a.dim(), b.ncols());
    let ldc = c.strides()[0] as usize;
    let a_rows_contiguous = rows_contiguous(&a);
    WINDOW_BUFFERS.with_borrow_mut(|(b_pack, a_pack)| {
        for j0 in (0..n).step_by(NC) {
            let j1 = (j0 + NC).min(n);
            let panels = (j1 - j0).div_ceil(NR);
            for k0 in (0..k).step_by(KC) {
                let k1 = (k0 + KC).min(k);
                let kc = k1 - k0;
                let packed = b_pack.resized(panels * kc * NR);
                pack_panels(packed, b.slice(ndarray::s![k0..k1, j0..j1]));
                // each output's block k0..k1 is added to C, except the first when not accumulating
                let add = accumulate || k0 > 0;
                let mut r = 0;
                while r < m {
                    let rows = (m - r).min(MR);
                    // A's rows as they are when contiguous, else (a transposed view) packed
                    let (ap, lda, packed_a) = if a_rows_contiguous {
                        // SAFETY: row r, column k0 of a, inside its view.
                        (unsafe { a.as_ptr().add(r * a.strides()[0] as usize + k0) }, a.strides()[0] as usize, false)
                    } else {
                        pack_depth_major(a_pack.resized(kc * MR), a.slice(ndarray::s![r..r + rows, k0..k1]));
                        (a_pack.as_slice().as_ptr(), MR, true)
                    };
                    for p in 0..panels {
                        let cols = (j1 - j0 - p * NR).min(NR);
                        // SAFETY: simd() found AVX-512 or AVX2 (`window_applies`); the tile reads `rows`
                        // rows of A (kc floats each, as laid out above), the panel's kc × NR
                        // floats, and writes `cols` columns of rows r..r+rows of c from column
                        // j0 + p·NR.
                        unsafe {
                            let panel = packed.as_ptr().add(p * kc * NR);
                            let cp = c.as_mut_ptr().add(r * ldc + j0 + p * NR);
                            let t = Tile { a: ap, lda, panel, k: kc, c: cp, ldc, cols, accumulate: add };
                            tile_dispatch(rows, t, packed_a, false);
                        }
                    }
                    r += rows;
                }
            }
        }
    });
}

/// B (kc × w, any strides) into panels of NR columns (kc × NR each, row by row; the last one's
/// missing columns zero). Read along B's contiguous axis when it has one. Every float of `out`
/// is written: it needs no zeroing first.
fn pack_panels(out: &mut [f32], b: ArrayView2<f32>) {
    assert_eq!(out.len(), b.ncols().div_ceil(NR) * b.nrows() * NR, "panels of B's shape");
    #[cfg(target_arch = "x86_64")]
    {
        let unit_stride = vector_packable(&b);
        match simd() {
            // SAFETY: simd() found the copy's features; out holds B's panels (asserted), B has
            // a unit stride.
            Simd::Avx512 if unit_stride => return unsafe { pack_panels_avx512(out, b) },
            Simd::Avx2 if unit_stride => return unsafe { pack_panels_avx2(out, b) },
            _ => {}
        }
    }
    pack_panels_strided(out, b);
}

/// Whether the vector copies can pack B: they read along a unit stride, forwards. (A view
/// with one row or column may carry a stride of 0 on that axis, and then has none.)
#[cfg(target_arch = "x86_64")]
fn vector_packable(b: &ArrayView2<f32>) -> bool {
    (b.strides()[0] == 1 || b.strides()[1] == 1) && b.strides().iter().all(|&s| s >= 0)
}

/// `pack_panels_avx512` in 8-float vectors: a row-major B copied a vector at a time, a
/// transposed view brought into rows 8 × 8 at a time by register transposes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_panels_avx2(out: &mut [f32], b: ArrayView2<f32>) {
    use crate::tensor::lane_mask8;
    use std::arch::x86_64::*;
    let (kc, w) = b.dim();
    let (rs, cs) = (b.strides()[0] as usize, b.strides()[1] as usize);
    for p in 0..w.div_ceil(NR) {
        let (j0, j1) = (p * NR, (p * NR + NR).min(w));
        let panel = &mut out[p * kc * NR..(p + 1) * kc * NR];
        if rs == 1 && cs != 1 {
            // column j of B is the run b[j·cs ..]: 8 columns × 8 depths loaded as 8 runs,
            // transposed into 8 depth rows (columns past j1 stored as zeros: the padding)
            for d0 in (0..kc).step_by(8) {
                let depths = (kc - d0).min(8);
                for q in 0..NR / 8 {
                    let c0 = j0 + 8 * q;
                    let (src, dst) = (b.as_ptr().wrapping_add(c0 * cs + d0), panel[d0 * NR + 8 * q..].as_mut_ptr());
                    // SAFETY: columns c0 .. j1 (at most 8) of B at depths d0 .. d0 + depths ≤
                    // kc; rows d0 .. d0 + depths of the panel, 8 floats each from 8·q.
                    unsafe {
                        crate::tensor::transpose_runs8(src, cs, depths, j1.saturating_sub(c0).min(8), dst, NR, true)
                    };
                }
            }
        } else {
            // row kk of B is the run b[kk·rs ..]: its 32 (or fewer, then zero-padded) columns
            let cols = j1 - j0;
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let src = b.as_ptr().wrapping_add(kk * rs + j0);
                for q in 0..NR / 8 {
                    let n = cols.saturating_sub(8 * q);
                    // SAFETY: columns j0 + 8·q + (0..n) of row kk, inside B (full or masked
                    // loads); the store writes 8 floats inside the panel's row.
                    unsafe {
                        let v = if n >= 8 {
                            _mm256_loadu_ps(src.add(8 * q))
                        } else {
                            _mm256_maskload_ps(src.wrapping_add(8 * q), lane_mask8(n))
                        };
                        _mm256_storeu_ps(dst.as_mut_ptr().add(8 * q), v);
                    }
                }
            }
        }
    }
}

/// `pack_panels` with vector loads and stores, for B with a unit stride: a row-major B (W, or
/// activations) copied 32 floats per depth; a transposed view (Wᵀ of a row-major W: each
/// column of B contiguous) brought into rows 16 × 16 at a time by register transposes. The
/// same floats in the same places as `pack_panels_strided`, at a vector per 16 instead of a
/// scalar load and store per float (the scalar copies were 6 % of a word2 step's samples,
/// reading the softmax's 10000 × 650 W and its transpose every step).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_panels_avx512(out: &mut [f32], b: ArrayView2<f32>) {
    use std::arch::x86_64::*;
    let (kc, w) = b.dim();
    let (rs, cs) = (b.strides()[0] as usize, b.strides()[1] as usize);
    for p in 0..w.div_ceil(NR) {
        let (j0, j1) = (p * NR, (p * NR + NR).min(w));
        let panel = &mut out[p * kc * NR..(p + 1) * kc * NR];
        if rs == 1 && cs != 1 {
            // column j of B is the run b[j·cs ..]: 16 columns × 16 depths loaded as 16 runs,
            // transposed into 16 depth rows (columns past j1 stored as zeros: the padding)
            for d0 in (0..kc).step_by(16) {
                let depths = (kc - d0).min(16);
                for half in 0..NR / 16 {
                    let c0 = j0 + 16 * half;
                    let (src, dst) = (b.as_ptr().wrapping_add(c0 * cs + d0), panel[d0 * NR + 16 * half..].as_mut_ptr());
                    // SAFETY: columns c0 .. j1 (at most 16) of B at depths d0 .. d0 + depths ≤
                    // kc; rows d0 .. d0 + depths of the panel, 16 floats each from 16·half.
                    unsafe {
                        crate::tensor::transpose_runs16(src, cs, depths, j1.saturating_sub(c0).min(16), dst, NR, true)
                    };
                }
            }
        } else {
            // row kk of B is the run b[kk·rs ..]: its 32 (or fewer, then zero-padded) columns
            let cols = j1 - j0;
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let src = b.as_ptr().wrapping_add(kk * rs + j0);
                for half in 0..NR / 16 {
                    let n = cols.saturating_sub(16 * half);
                    // SAFETY: columns j0 + 16·half + (0..n) of row kk, inside B (masked at the
                    // end); the store writes 16 floats inside the panel's row.
                    unsafe {
                        let v = if n >= 16 {
                            _mm512_loadu_ps(src.add(16 * half))
                        } else {
                            _mm512_maskz_loadu_ps(lane_mask(n), src.wrapping_add(16 * half))
                        };
                        _mm512_storeu_ps(dst.as_mut_ptr().add(16 * half), v);
                    }
                }
            }
        }
    }
}

/// `pack_panels` for any strides, one float at a time.
fn pack_panels_strided(out: &mut [f32], b: ArrayView2<f32>) {
    let (kc, w) = b.dim();
    let (rs, cs) = (b.strides()[0], b.strides()[1]);
    for p in 0..w.div_ceil(NR) {
        let (j0, j1) = (p * NR, (p * NR + NR).min(w));
        let panel = &mut out[p * kc * NR..(p + 1) * kc * NR];
        if j1 - j0 < NR {
            panel.chunks_exact_mut(NR).for_each(|row| row[j1 - j0..].fill(0.0));
        }
        if rs == 1 && kc > 1 {
            // a transposed view (Wᵀ of a row-major W): each column of B is a contiguous run,
            // read DEPTH_RUN at a time across the panel's columns so that the rows written
            // (DEPTH_RUN × NR floats) stay in L1 until complete
            const DEPTH_RUN: usize = 16;
            for d0 in (0..kc).step_by(DEPTH_RUN) {
                let d1 = (d0 + DEPTH_RUN).min(kc);
                for j in j0..j1 {
                    // SAFETY: column j, rows d0..d1 of b (unit row stride), inside its view.
                    let col = unsafe { b.as_ptr().offset(j as isize * cs) };
                    for kk in d0..d1 {
                        // SAFETY: as above.
                        panel[kk * NR + j - j0] = unsafe { *col.add(kk) };
                    }
                }
            }
        } else {
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                // SAFETY: row kk, columns j0..j1 of b, inside its view (strides rs, cs).
                let src = unsafe { b.as_ptr().offset(kk as isize * rs + j0 as isize * cs) };
                for (jj, o) in dst[..j1 - j0].iter_mut().enumerate() {
                    // SAFETY: as above.
                    *o = unsafe { *src.offset(jj as isize * cs) };
                }
            }
        }
    }
}

/// Rows of A (rows ≤ MR, any strides) depth-major into `out` (kc × MR: depth kk's values at
/// kk·MR..kk·MR + rows). A transposed view (columns contiguous) copies runs of `rows` floats.
fn pack_depth_major(out: &mut [f32], a: ArrayView2<f32>) {
    for (kk, col) in a.columns().into_iter().enumerate() {
        let dst = &mut out[kk * MR..kk * MR + col.len()];
        match col.as_slice() {
            // a full tile's run as one fixed-size copy: inlined, where a run of unknown length
            // calls memmove once per depth (3.5 % of a word1 step)
            Some(run) if run.len() == MR => {
                let dst: &mut [f32; MR] = dst.try_into().unwrap();
                *dst = run.try_into().unwrap();
            }
            Some(run) => dst.copy_from_slice(run),
            None => dst.iter_mut().zip(col).for_each(|(o, x)| *o = *x),
        }
    }
}

/// One register tile's operands: rows of A (row stride `lda`, `k` wide), a panel (k × NR), and
/// the rows of C (row stride `ldc`) whose first `cols` columns it writes.
#[derive(Clone, Copy)]
struct Tile {
    a: *const f32,
    lda: usize,
    panel: *const f32,
    k: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
}

/// `$f::<R, DEPTH_MAJOR, PREFETCH>($t)` for a row count known at run time (one of the literals)
/// and the two flags, as const generics (packed rows are never prefetched).
macro_rules! tile_for_rows {
    ($f:ident, $rows:expr, $t:expr, $depth_major:expr, $prefetch:expr; $($r:literal)*) => {
        match ($rows, $depth_major, $prefetch) {
            $(($r, false, false) => $f::<$r, false, false>($t),)*
            $(($r, false, true) => $f::<$r, false, true>($t),)*
            $(($r, true, false) => $f::<$r, true, false>($t),)*
            _ => unreachable!(concat!(stringify!($f), ": rows out of range, or packed rows prefetched")),
        }
    };
}

/// The register tile for `rows` (1..=MR; on AVX2 any count when A is row-major) rows of A: in
/// row-major order (`Tile::lda` apart), prefetching the panel ahead when it comes from beyond
/// L2 (`PREFETCH_MIN_BYTES`), or packed depth-major (`pack_depth_major`: each depth's MR values
/// side by side, so the broadcasts read one sequential stream).
unsafe fn tile_dispatch(rows: usize, t: Tile, depth_major: bool, prefetch: bool) {
    if simd() == Simd::Avx2 {
        // SAFETY: the caller's, passed on; simd() found AVX2 and FMA.
        return unsafe { tile_avx2_split(rows, t, depth_major, prefetch) };
    }
    // SAFETY: the caller's, passed on; simd() found AVX-512.
    unsafe { tile_for_rows!(tile, rows, t, depth_major, prefetch; 1 2 3 4 5 6 7 8 9 10 11 12) }
}

/// C[0..R, 0..cols] (+)= A[0..R, 0..k] · panel, faer's order: per output, sums over blocks of
/// KC terms, each an FMA chain from zero, added to C block after block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const DEPTH_MAJOR: bool, const PREFETCH: bool>(t: Tile) {
    // a last panel of at most 16 columns takes one vector per row instead of two: half its FMAs
    // (MNIST's ∂L/∂h·W_h has 100 columns, three panels and 4 columns; word1's 300, word2's 650)
    // SAFETY: the caller's, passed on.
    unsafe {
        if t.cols <= 16 {
            tile_vectors::<R, DEPTH_MAJOR, PREFETCH, 1>(t)
        } else {
            tile_vectors::<R, DEPTH_MAJOR, PREFETCH, 2>(t)
        }
    }
}

/// `tile` on the first V (1 or 2) 16-float vectors of each panel row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_vectors<const R: usize, const DEPTH_MAJOR: bool, const PREFETCH: bool, const V: usize>(t: Tile) {
    let Tile { a, lda, panel, k, c, ldc, cols, accumulate } = t;
    use std::arch::x86_64::*;
    let masks = [lane_mask(cols), lane_mask(cols.saturating_sub(16))];
    let mut k0 = 0;
    while k0 < k {
        let k1 = (k0 + KC).min(k);
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        // SAFETY (whole block): the caller's bounds; masked loads and stores touch only the
        // `cols` columns of C that exist (masked-off lanes do not fault).
        unsafe {
            let mut b = panel.add(k0 * NR);
            for kk in k0..k1 {
                if PREFETCH {
                    // a hint only: past the panel's end it touches nothing (wrapping_add: no
                    // out-of-bounds pointer arithmetic)
                    let ahead = b.wrapping_add(PREFETCH_DEPTHS * NR);
                    for v in 0..V {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16 * v) as *const i8);
                    }
                }
                let mut bv = [_mm512_setzero_ps(); V];
                for (v, bv) in bv.iter_mut().enumerate() {
                    *bv = _mm512_loadu_ps(b.add(16 * v));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let at = if DEPTH_MAJOR { kk * MR + r } else { r * lda + kk };
                    let x = _mm512_set1_ps(*a.add(at));
                    for v in 0..V {
                        acc[v] = _mm512_fmadd_ps(x, bv[v], acc[v]);
                    }
                }
                b = b.add(NR);
            }
            let add = accumulate || k0 > 0;
            for (r, acc) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                for v in 0..V {
                    let mut s = acc[v];
                    if add {
                        s = _mm512_add_ps(_mm512_maskz_loadu_ps(masks[v], cr.add(16 * v)), s);
                    }
                    _mm512_mask_storeu_ps(cr.add(16 * v), masks[v], s);
                }
            }
        }
        k0 = k1;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const R: usize, const DEPTH_MAJOR: bool, const PREFETCH: bool>(_: Tile) {
    unreachable!("panels are packed only where simd() found AVX-512 or AVX2")
}

/// Rows of A per AVX2 register tile: 16 ymm hold 3 × 4 accumulators (a panel's 32 columns,
/// four 8-lane vectors per row), the three rows' broadcasts and one B vector at a time.
const MR_AVX2: usize = 3;

/// `tile_dispatch` on AVX2: the same operands (panels of NR = 32 columns, A row-major or
/// depth-major with MR values per depth; rows up to MR when depth-major, any number when
/// row-major: the per-step products pass all of theirs), cut into register tiles of at most
/// MR_AVX2 rows (near-equal: 11 rows run as 3 + 4 × 2, 64 as 2 × 2 + 20 × 3). Each output's
/// arithmetic is the AVX-512 tile's, i.e. faer's (its AVX2 kernel has the same KC = 512
/// depth blocks, each an FMA chain from zero in k order), so the bits do not depend on the
/// cut. Per depth, 4 B loads and 3 broadcasts feed 12 FMAs (faer's own 24 × 4 tile: 3 and 4);
/// a 6 × 16 tile (2 and 6, each panel in two 16-column halves) ran MNIST's in-cache per-step
/// products and the weight gradients 5–15 % slower (examples/gemm_shapes.rs, AMD Zen 3, one
/// thread).
unsafe fn tile_avx2_split(rows: usize, t: Tile, depth_major: bool, prefetch: bool) {
    let tiles = rows.div_ceil(MR_AVX2);
    let mut r = 0;
    for i in 0..tiles {
        let n = (rows - r) / (tiles - i);
        // row r of A: r·lda floats on in row-major order, r within each depth's MR values
        // when depth-major
        let a = t.a.wrapping_add(if depth_major { r } else { r * t.lda });
        let sub = Tile { a, c: t.c.wrapping_add(r * t.ldc), ..t };
        // SAFETY: the caller's, for rows r..r+n of its tile.
        unsafe { tile_for_rows!(tile_avx2, n, sub, depth_major, prefetch; 1 2 3) };
        r += n;
    }
}

/// C[0..R, 0..cols] (+)= A[0..R, 0..k] · panel, faer's order as `tile`: as many 8-float
/// vectors per row as the panel has columns (a last panel of 4 columns, MNIST's, takes one).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const DEPTH_MAJOR: bool, const PREFETCH: bool>(t: Tile) {
    // SAFETY: the caller's, passed on.
    unsafe {
        match t.cols.div_ceil(8) {
            1 => tile_avx2_vectors::<R, DEPTH_MAJOR, PREFETCH, 1>(t),
            2 => tile_avx2_vectors::<R, DEPTH_MAJOR, PREFETCH, 2>(t),
            3 => tile_avx2_vectors::<R, DEPTH_MAJOR, PREFETCH, 3>(t),
            _ => tile_avx2_vectors::<R, DEPTH_MAJOR, PREFETCH, 4>(t),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx2<const R: usize, const DEPTH_MAJOR: bool, const PREFETCH: bool>(_: Tile) {
    unreachable!("panels are packed only where simd() found AVX-512 or AVX2")
}

/// `tile_avx2` on the first V (1..=4) 8-float vectors of each panel row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_vectors<const R: usize, const DEPTH_MAJOR: bool, const PREFETCH: bool, const V: usize>(t: Tile) {
    let Tile { a, lda, panel, k, c, ldc, cols, accumulate } = t;
    use std::arch::x86_64::*;
    let mut masks = [_mm256_setzero_si256(); V];
    for (v, m) in masks.iter_mut().enumerate() {
        *m = crate::tensor::lane_mask8(cols.saturating_sub(8 * v));
    }
    let full = cols == 8 * V;
    let mut k0 = 0;
    while k0 < k {
        let k1 = (k0 + KC).min(k);
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        // SAFETY (whole block): the caller's bounds; the panel's rows are NR floats (zero-
        // padded), so its full-vector loads stay inside it; C's partial columns are read and
        // written through masks (masked-off lanes do not fault).
        unsafe {
            let mut b = panel.add(k0 * NR);
            for kk in k0..k1 {
                if PREFETCH {
                    // a hint only, both cache lines of the row (wrapping_add: no out-of-bounds
                    // pointer arithmetic)
                    let ahead = b.wrapping_add(PREFETCH_DEPTHS * NR);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16) as *const i8);
                }
                let mut x = [_mm256_setzero_ps(); R];
                for (r, x) in x.iter_mut().enumerate() {
                    let at = if DEPTH_MAJOR { kk * MR + r } else { r * lda + kk };
                    *x = _mm256_set1_ps(*a.add(at));
                }
                // one B vector at a time against the R broadcasts: R + 1 registers besides
                // the accumulators
                for v in 0..V {
                    let bv = _mm256_loadu_ps(b.add(8 * v));
                    for (acc, x) in acc.iter_mut().zip(&x) {
                        acc[v] = _mm256_fmadd_ps(*x, bv, acc[v]);
                    }
                }
                b = b.add(NR);
            }
            let add = accumulate || k0 > 0;
            for (r, acc) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                for v in 0..V {
                    let mut s = acc[v];
                    if full {
                        if add {
                            s = _mm256_add_ps(_mm256_loadu_ps(cr.add(8 * v)), s);
                        }
                        _mm256_storeu_ps(cr.add(8 * v), s);
                    } else {
                        if add {
                            s = _mm256_add_ps(_mm256_maskload_ps(cr.add(8 * v), masks[v]), s);
                        }
                        _mm256_maskstore_ps(cr.add(8 * v), masks[v], s);
                    }
                }
            }
        }
        k0 = k1;
    }
}

fn is_f32<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
}

fn as_f32<T: 'static>(v: ArrayView2<'_, T>) -> ArrayView2<'_, f32> {
    assert!(is_f32::<T>());
    // SAFETY: T is f32 (checked above): the same elements, shape and strides.
    unsafe { std::mem::transmute::<ArrayView2<'_, T>, ArrayView2<'_, f32>>(v) }
}

fn as_f32_mut<T: 'static>(v: ArrayViewMut2<'_, T>) -> ArrayViewMut2<'_, f32> {
    assert!(is_f32::<T>());
    // SAFETY: as `as_f32`.
    unsafe { std::mem::transmute::<ArrayViewMut2<'_, T>, ArrayViewMut2<'_, f32>>(v) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::gemm;
    use ndarray::{Array2, s};
    use rand::{Rng, SeedableRng};

    fn random(rows: usize, cols: usize, rng: &mut rand_pcg::Pcg64) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0f32..1.0))
    }

    /// Random operands of an m×k·k×n product in the layouts the layers pass: A row-major with
    /// a row stride other than k, or transposed (Xᵀ of a row-major X); B row-major, Wᵀ of a
    /// row-major W, or with no unit stride.
    struct Operands {
        a_wide: Array2<f32>,
        a_t: Array2<f32>,
        b_rows: Array2<f32>,
        b_t: Array2<f32>,
        b_wide: Array2<f32>,
    }

    impl Operands {
        fn new(m: usize, k: usize, n: usize, rng: &mut rand_pcg::Pcg64) -> Self {
            Operands {
                a_wide: random(m, k + 3, rng),
                a_t: random(k, m, rng),
                b_rows: random(k, n, rng),
                b_t: random(n, k, rng),
                b_wide: random(k, 2 * n, rng),
            }
        }

        fn a_layouts(&self) -> [ArrayView2<'_, f32>; 2] {
            let k = self.a_t.nrows();
            [self.a_wide.slice(s![.., 1..k + 1]), self.a_t.t()]
        }

        fn b_layouts(&self) -> [ArrayView2<'_, f32>; 3] {
            [self.b_rows.view(), self.b_t.t(), self.b_wide.slice(s![.., ..;2])]
        }
    }

    /// The layers' per-step shapes (char, word 300/650, MNIST, both halves and whole batches,
    /// forward k = H and backward k = G·H > KC), edges of every kind: bit for bit faer's.
    #[test]
    fn panels_give_faers_bits() {
        if !PanelMatrix::useful::<f32>(32, Precision::F32) {
            eprintln!("neither AVX-512 nor AVX2 on this CPU: the panel kernel is not used, nothing to compare");
            return;
        }
        let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
        for &(m, k, n) in &[
            (32, 512, 2048),
            (32, 2048, 512),
            (64, 512, 2048),
            (10, 300, 1200),
            (10, 1200, 300),
            (10, 650, 2600),
            (10, 2600, 650),
            (50, 100, 400),
            (50, 400, 100),
            (13, 1100, 37),
            (3, 17, 129),
        ] {
            let a_big = random(m, k + 5, &mut rng);
            let a = a_big.slice(s![.., 2..k + 2]); // a row stride other than k
            let b = random(k, n, &mut rng);
            let bt = random(n, k, &mut rng);
            let c0 = random(m, n, &mut rng);
            for (bv, what) in [(b.view(), "B"), (bt.t(), "Bᵀ view")] {
                let mut store = PanelMatrix::default();
                let _ = store.pack(bv, m, Precision::F32);
                for accumulate in [false, true] {
                    for par in [false, true] {
                        crate::tensor::set_threads(2);
                        let mut want = c0.clone();
                        gemm_with(want.view_mut(), accumulate, a, bv, 1.0, par);
                        let mut got = c0.clone();
                        // the kernel itself (FixedRhs::product would fall back on faer silently)
                        store.product(got.view_mut(), accumulate, a, par);
                        let same = want.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{m}×{k}·{k}×{n} ({what}), accumulate {accumulate}, par {par}: not faer's bits");
                    }
                }
            }
        }
        // f64 and small batches take faer's path: the same call, the same numbers
        let a = Array2::from_shape_fn((4, 9), |(i, j)| (i * 9 + j) as f64 * 0.1);
        let b = Array2::from_shape_fn((9, 5), |(i, j)| (i + j) as f64);
        let mut store = PanelMatrix::default();
        let rhs = store.pack(b.view(), 4, Precision::F32);
        let mut c = Array2::zeros((4, 5));
        rhs.product(c.view_mut(), false, a.view(), false);
        let mut want = Array2::zeros((4, 5));
        gemm(want.view_mut(), false, a.view(), b.view(), 1.0);
        assert_eq!(c, want);
    }

    /// The AVX2 tiles on any CPU with AVX2 and FMA (on an AVX-512 CPU `simd()` picks the
    /// AVX-512 tile, so the product tests above do not reach them there): panels packed by the
    /// scalar copy, A row-major (a row stride other than k) or packed depth-major as the window
    /// kernel packs a transposed A, row blocks of 2–12 rows, last panels of 4–28 columns, depths
    /// across KC blocks, accumulating or not: bit for bit faer's.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_tiles_give_faers_bits() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            eprintln!("no AVX2 + FMA on this CPU: the AVX2 tiles cannot run");
            return;
        }
        let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
        for &(m, k, n) in
            &[(12, 100, 100), (11, 513, 36), (10, 1100, 60), (7, 40, 44), (5, 300, 52), (2, 80, 32), (3, 40, 36)]
        {
            // shapes faer takes to its blocked kernel (others go to paths with other orders)
            assert!(kernel_applies(m, k, n));
            let a_big = random(m, k + 5, &mut rng);
            let a = a_big.slice(s![.., 2..k + 2]);
            let b = random(k, n, &mut rng);
            let c0 = random(m, n, &mut rng);
            let mut panels = vec![0.0f32; n.div_ceil(NR) * k * NR];
            pack_panels_strided(&mut panels, b.view());
            let mut a_packed = vec![0.0f32; k * MR];
            pack_depth_major(&mut a_packed, a);
            for accumulate in [false, true] {
                let mut want = c0.clone();
                crate::tensor::gemm::faer_product(want.view_mut(), accumulate, a, b.view(), 1.0, faer::Par::Seq);
                // row-major A with and without the panel prefetch, and depth-major A
                for (depth_major, prefetch) in [(false, false), (false, true), (true, false)] {
                    let mut got = c0.clone();
                    for p in 0..n.div_ceil(NR) {
                        let (ap, lda) =
                            if depth_major { (a_packed.as_ptr(), MR) } else { (a.as_ptr(), a.strides()[0] as usize) };
                        let t = Tile {
                            a: ap,
                            lda,
                            panel: panels[p * k * NR..].as_ptr(),
                            k,
                            c: got.as_mut_ptr().wrapping_add(p * NR),
                            ldc: n,
                            cols: (n - p * NR).min(NR),
                            accumulate,
                        };
                        // SAFETY: AVX2 and FMA found above; the operands are as `Tile` says.
                        unsafe { tile_avx2_split(m, t, depth_major, prefetch) };
                    }
                    let same = want.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(
                        same,
                        "{m}×{k}·{k}×{n} depth-major {depth_major} prefetch {prefetch} acc {accumulate}: not faer's bits"
                    );
                }
            }
        }
    }

    /// The vector packing against the scalar one: every float of every panel the same, and
    /// written (NaN-filled buffers), for both unit-stride layouts and partial panels.
    #[test]
    fn vector_packing_puts_every_float_where_the_scalar_one_does() {
        if simd() < Simd::Avx2 {
            eprintln!("neither AVX-512 nor AVX2 on this CPU: panels are packed one float at a time only");
            return;
        }
        let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
        // depths and widths around the 16-float vectors and the 32-column panels
        for (kc, w) in [(1, 1), (1, 40), (3, 5), (16, 32), (17, 33), (31, 64), (40, 70), (512, 100)] {
            let w_rows = random(w, kc + 3, &mut rng);
            let b_rows = random(kc, w + 5, &mut rng);
            // Wᵀ of a row-major W (rows a little wider than kc), and a row-major B with a row
            // stride above its width: each path of the vector packing, partial panels included
            for b in [w_rows.slice(s![.., 1..kc + 1]).reversed_axes(), b_rows.slice(s![.., 2..w + 2])] {
                let len = w.div_ceil(NR) * kc * NR;
                let (mut fast, mut slow) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                pack_panels(&mut fast, b);
                pack_panels_strided(&mut slow, b);
                assert!(slow.iter().all(|v| !v.is_nan()), "{kc} × {w}: every float written");
                let same = fast.iter().zip(&slow).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{kc} × {w}, strides {:?}", b.strides());
                // the AVX2 copy too where simd() picked AVX-512 (it would not reach it), on
                // what `pack_panels` gives the vector copies
                #[cfg(target_arch = "x86_64")]
                if simd() == Simd::Avx512 && vector_packable(&b) {
                    let mut avx2 = vec![f32::NAN; len];
                    // SAFETY: simd() found AVX-512, which includes AVX2; B has a unit stride.
                    unsafe { pack_panels_avx2(&mut avx2, b) };
                    let same = avx2.iter().zip(&slow).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "AVX2 copy: {kc} × {w}, strides {:?}", b.strides());
                }
            }
        }
    }

    /// Window-sized products through the cache-blocked kernel: bit for bit faer's, on the
    /// layers' window shapes (input projection and its gradients, softmax and its gradients)
    /// and on edges (rows off the tile grid, columns across NC blocks and off the panel grid,
    /// depths of one to three KC blocks), every operand layout the layers pass (A row-major,
    /// with a row stride other than k, or a transposed view; B row-major, Wᵀ of a row-major W,
    /// or strided), accumulating into random C or not, one thread or two.
    #[test]
    fn window_products_give_faers_bits() {
        if simd() < Simd::Avx2 {
            eprintln!("neither AVX-512 nor AVX2 on this CPU: the window kernel is not used, nothing to compare");
            return;
        }
        crate::tensor::set_threads(2);
        let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
        for &(m, k, n) in &[
            (700, 650, 2600),
            (700, 2600, 650),
            (650, 700, 2600),
            (700, 300, 1200),
            (6400, 50, 64),
            (128, 1, 300),
            (131, 1100, 1061),
            (1000, 513, 33),
            (200, 1536, 520),
            // few rows: sequential MNIST's dW_h = Hᵀ·dG (100 of them) and smaller, which the
            // kernel takes on AVX2 when A is transposed
            (100, 7000, 400),
            (12, 3000, 130),
            (2, 5000, 520),
        ] {
            let ops = Operands::new(m, k, n, &mut rng);
            let c0 = random(m, n, &mut rng);
            for (ai, a) in ops.a_layouts().iter().enumerate() {
                for (bi, b) in ops.b_layouts().iter().enumerate() {
                    if !window_applies(&c0.clone().view_mut(), a, b, 1.0) {
                        // on AVX2 only a transposed A (the weight gradients) takes the kernel;
                        // on AVX-512 every layout, from WINDOW_MIN_ROWS rows
                        let faers = match simd() {
                            Simd::Avx2 => rows_contiguous(a),
                            _ => m < WINDOW_MIN_ROWS,
                        };
                        assert!(k < 2 || faers, "{m}×{k}·{k}×{n}: the window kernel should take it");
                        continue;
                    }
                    for accumulate in [false, true] {
                        for par in [false, true] {
                            let mut want = c0.clone();
                            let p = if par { faer::Par::rayon(2) } else { faer::Par::Seq };
                            crate::tensor::gemm::faer_product(want.view_mut(), accumulate, *a, *b, 1.0, p);
                            let mut got = c0.clone();
                            window_product(got.view_mut(), accumulate, *a, *b, par);
                            let same = want.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits());
                            assert!(same, "{m}×{k}·{k}×{n} A{ai} B{bi} acc {accumulate} par {par}: not faer's bits");
                        }
                    }
                }
            }
        }
    }

    /// bf16 on this CPU's unit (AMX, or AVX512-BF16 on AMD): every row count the layers use (tails of 1–31 rows, whole 32-row blocks),
    /// depths and widths off the 32 grid, accumulating or not, one thread or two, both operand
    /// layouts (the per-step and softmax one: A row-major, B = Wᵀ of a row-major W; the weight
    /// gradients': A = Xᵀ of a row-major X, B row-major; and B with no unit stride): within f32
    /// rounding of the exact sum of the bf16-rounded operands.
    #[test]
    fn bf16_panels_sum_the_rounded_operands() {
        if let Err(why) = crate::tensor::bf16_products() {
            eprintln!("bf16 products not measurable here: {why}");
            return;
        }
        let mut rng = rand_pcg::Pcg64::seed_from_u64(11);
        for &(m, k, n) in &[
            (32, 512, 2048),
            (32, 2048, 512),
            (10, 300, 1200),
            (10, 2600, 650),
            (50, 100, 400),
            (50, 400, 100),
            (1, 33, 40),
            (17, 31, 33),
            (16, 64, 32),
            (100, 100, 400),
            (512, 6400, 2048),
            (37, 1001, 70),
        ] {
            let ops = Operands::new(m, k, n, &mut rng);
            let ([a_rows, a_t], [b_rows, b_t, b_strided]) = (ops.a_layouts(), ops.b_layouts());
            for (a, b) in [(a_rows, b_t), (a_t, b_rows), (a_rows, b_strided)]
                .into_iter()
                // the window-sized shape in the weight gradients' layout only (the one it has)
                .enumerate()
                .filter(|&(i, _)| m * k * n < 1 << 26 || i == 1)
                .map(|(_, ab)| ab)
            {
                check_bf16(m, k, n, a, b, &mut rng);
            }
        }
    }

    fn check_bf16(m: usize, k: usize, n: usize, a: ArrayView2<f32>, bt: ArrayView2<f32>, rng: &mut rand_pcg::Pcg64) {
        let r = |x: f32| f32::from_bits((amx::bf16(x) as u32) << 16) as f64;
        let c0 = random(m, n, rng);
        let mut store = PanelMatrix::default();
        let rhs = store.pack(bt, m, Precision::Bf16);
        let big = m * n * k > 1 << 26;
        for accumulate in [false, true] {
            for par in [false, true] {
                crate::tensor::set_threads(2);
                let mut got = c0.clone();
                rhs.product(got.view_mut(), accumulate, a, par);
                // the window-sized product: every 7th row and column, not all 10⁹ terms
                let step = if big { 7 } else { 1 };
                for i in (0..m).step_by(step) {
                    for j in (0..n).step_by(step) {
                        let (mut exact, mut scale) = (0.0f64, 0.0f64);
                        for kk in 0..k {
                            let t = r(a[[i, kk]]) * r(bt[[kk, j]]);
                            exact += t;
                            scale += t.abs();
                        }
                        if accumulate {
                            exact += c0[[i, j]] as f64;
                            scale += (c0[[i, j]] as f64).abs();
                        }
                        let err = (got[[i, j]] as f64 - exact).abs();
                        assert!(
                            err <= 4e-6 * scale + 1e-30,
                            "{m}×{k}·{k}×{n} [{i},{j}] acc {accumulate} par {par}: {} vs {exact} (scale {scale})",
                            got[[i, j]]
                        );
                    }
                }
            }
        }
    }
}
