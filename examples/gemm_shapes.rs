//! Throughput of the GEMM shapes one training step of each benchmark config runs, alone:
//! where the time of `qlstm bench` goes. usage: cargo run --release --example gemm_shapes [threads]
use std::time::Instant;

use ndarray::Array2;
use qlstm::tensor::{PanelMatrix, Precision, faer_product, gemm, set_threads, threads};

/// GFLOP/s of faer's GEMM on the shape, of `gemm` (our cache-blocked kernel where it takes the
/// shape, else faer), and of the panel kernel where it applies (a per-step product: B fixed
/// and packed once, as for a window's W_h). The three run interleaved, 15 rounds, median each.
fn time(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> (f64, f64, Option<f64>) {
    let a = if ta { Array2::<f32>::from_elem((k, m), 0.5) } else { Array2::<f32>::from_elem((m, k), 0.5) };
    let b = if tb { Array2::<f32>::from_elem((n, k), 0.25) } else { Array2::<f32>::from_elem((k, n), 0.25) };
    let mut c = Array2::<f32>::zeros((m, n));
    let av = if ta { a.t() } else { a.view() };
    let bv = if tb { b.t() } else { b.view() };
    let gflops = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        2.0 * (m * k * n) as f64 / t[t.len() / 2] / 1e9
    };
    let mut store = PanelMatrix::default();
    let panels = !ta && PanelMatrix::useful::<f32>(m, Precision::F32);
    let rhs = store.pack(bv, m, Precision::F32);
    let par = if threads() > 1 { faer::Par::rayon(threads()) } else { faer::Par::Seq };
    let (mut tf, mut tg, mut tp) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..15 {
        let t0 = Instant::now();
        faer_product(c.view_mut(), true, av, bv, 1.0, par);
        tf.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        gemm(c.view_mut(), true, av, bv, 1.0);
        tg.push(t0.elapsed().as_secs_f64());
        if panels {
            let t0 = Instant::now();
            rhs.product(c.view_mut(), true, av, threads() > 1);
            tp.push(t0.elapsed().as_secs_f64());
        }
    }
    (gflops(&mut tf), gflops(&mut tg), panels.then(|| gflops(&mut tp)))
}

fn main() {
    let threads = std::env::args().nth(1).map_or(2, |s| s.parse().unwrap());
    set_threads(threads);
    println!("shape (m×k · k×n), GFLOP/s at {threads} threads: faer, gemm, and B packed in panels once");
    // Per-step products run on half the batch per thread (two threads); the backward one
    // reads W_h as (4H, H) row-major (the transposed view is kept for comparison).
    for (what, m, k, n, ta, tb) in [
        ("char step h·W_hᵀ", 64, 512, 2048, false, false),
        ("char half-batch step", 32, 512, 2048, false, false),
        ("char half-batch back", 32, 2048, 512, false, false),
        ("char half-batch back, W_hᵀ view", 32, 2048, 512, false, true),
        ("char window dW_h = Hᵀ·dG", 512, 6400, 2048, true, false),
        ("word1 half-batch step", 10, 300, 1200, false, false),
        ("word1 half-batch back", 10, 1200, 300, false, false),
        ("word1 half-batch back, W_hᵀ view", 10, 1200, 300, false, true),
        ("word1 softmax X·Wᵀ", 700, 300, 10000, false, true),
        ("word1 softmax dW = dYᵀ·X", 10000, 700, 300, true, false),
        ("word1 softmax dX = dY·W", 700, 10000, 300, false, false),
        ("word2 half-batch step", 10, 650, 2600, false, false),
        ("word2 half-batch back", 10, 2600, 650, false, false),
        ("word2 half-batch back, W_hᵀ view", 10, 2600, 650, false, true),
        ("word2 input X·W_xᵀ", 700, 650, 2600, false, true),
        ("word2 input dX = dG·W_x", 700, 2600, 650, false, false),
        ("word2 dW = dGᵀ·X", 2600, 700, 650, true, false),
        ("word2 softmax X·Wᵀ", 700, 650, 10000, false, true),
        ("word2 softmax dW = dYᵀ·X", 10000, 700, 650, true, false),
        ("word2 softmax dX = dY·W", 700, 10000, 650, false, false),
        ("mnist half-batch step", 50, 100, 400, false, false),
        ("mnist half-batch back", 50, 400, 100, false, false),
        ("mnist half-batch back, W_hᵀ view", 50, 400, 100, false, true),
        ("mnist input X·W_xᵀ (K=1)", 78400, 1, 400, false, false),
        ("mnist dW_x = Xᵀ·dG", 1, 78400, 400, true, false),
        ("mnist dW_h = Hᵀ·dG", 100, 78400, 400, true, false),
        ("square 2048", 2048, 2048, 2048, false, false),
    ] {
        let (faer, ours, panels) = time(m, k, n, ta, tb);
        let panels = panels.map_or("-".to_string(), |g| format!("{g:.1}"));
        println!("{what:<34} {m}×{k}·{k}×{n} {faer:>7.1} {ours:>7.1} {panels:>7}");
    }
}
