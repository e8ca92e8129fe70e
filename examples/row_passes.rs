//! The window's two row passes of a layer's backward — ∂L/∂b = Σ_rows ∂L/∂G and a one-hot
//! input's ∂L/∂W_x (each row of ∂L/∂z_x added into its token's row) — timed three ways on
//! two threads, at char's (6400, 2048) and MNIST's (78400, 400) window shapes:
//! both on one thread; each split by columns, half of every row per thread (session 15's
//! way, `tensor::rows` before session 16); the two side by side, one thread each over whole
//! rows (`Layer::backward` now). All three give the same bits (asserted). Then the bias sum
//! alone: whole rows on one thread, the first half of every row on one thread, both halves
//! on two threads (the split's cost: a half of every row is not half the memory traffic).
//! usage: cargo run --release --example row_passes [ROUNDS]
use std::time::Instant;

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis};
use qlstm::tensor::{add_rows_at, column_sums, set_threads};

/// Each pass's columns cut in two at a multiple of 16, one half per thread.
fn column_split(dw: ArrayViewMut2<f32>, ids: &[u32], dz: ArrayView2<f32>, dg: ArrayView2<f32>) -> Array1<f32> {
    let cut = dz.ncols() / 2 / 16 * 16;
    let (w0, w1) = dw.split_at(Axis(1), cut);
    let (z0, z1) = dz.split_at(Axis(1), cut);
    rayon::join(|| add_rows_at(w0, ids, z0), || add_rows_at(w1, ids, z1));
    let (g0, g1) = dg.split_at(Axis(1), cut);
    let (s0, s1) = rayon::join(|| column_sums(g0), || column_sums(g1));
    s0.iter().chain(&s1).copied().collect()
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(5, |s| s.parse().unwrap());
    set_threads(2);
    println!("shape (rows × cols), ms per pair of passes: one thread, split by columns, side by side");
    for (name, rows, cols, vocab) in [("char", 6400, 2048, 50), ("mnist-sized", 78400, 400, 50)] {
        let dg = Array2::from_shape_fn((rows, cols), |(r, c)| ((r * 7919 + c * 104_729) % 1000) as f32 * 1e-3 - 0.5);
        let dz = Array2::from_shape_fn((rows, cols), |(r, c)| ((r * 104_729 + c * 7919) % 1000) as f32 * 1e-3 - 0.5);
        let ids: Vec<u32> = (0..rows).map(|r| ((r * 31) % vocab) as u32).collect();
        let mut dw = Array2::<f32>::zeros((vocab, cols));
        let mut want = None;
        for _ in 0..rounds {
            let mut ms = [0.0; 3];
            for (way, ms) in ms.iter_mut().enumerate() {
                dw.fill(0.0);
                let start = Instant::now();
                let db = match way {
                    0 => {
                        add_rows_at(dw.view_mut(), &ids, dz.view());
                        column_sums(dg.view())
                    }
                    1 => column_split(dw.view_mut(), &ids, dz.view(), dg.view()),
                    _ => rayon::join(|| column_sums(dg.view()), || add_rows_at(dw.view_mut(), &ids, dz.view())).0,
                };
                *ms = start.elapsed().as_secs_f64() * 1e3;
                let got: Vec<u32> = db.iter().chain(dw.iter()).map(|v| v.to_bits()).collect();
                assert!(want.get_or_insert_with(|| got.clone()) == &got, "{name}: way {way} changed the bits");
            }
            println!("{name:12} {rows:6} × {cols:5}   {:7.2} {:7.2} {:7.2}", ms[0], ms[1], ms[2]);
        }
        println!(
            "{name}: ms of Σ_rows ∂L/∂G alone: whole rows, one thread; half of every row, one thread; halves on two threads"
        );
        let cut = cols / 2 / 16 * 16;
        for _ in 0..rounds {
            let time = |f: &dyn Fn()| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            };
            let whole = time(&|| drop(column_sums(dg.view())));
            let half = time(&|| drop(column_sums(dg.slice(ndarray::s![.., ..cut]))));
            let (g0, g1) = dg.view().split_at(Axis(1), cut);
            let split = time(&|| drop(rayon::join(|| column_sums(g0), || column_sums(g1))));
            println!("{name:12} {rows:6} × {cols:5}   {whole:7.2} {half:7.2} {split:7.2}");
        }
    }
}
