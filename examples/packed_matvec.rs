//! The packed kernel alone: W·x for a random (G·H, H) bit matrix, f32 x, against the same
//! matrix as dense f32 through the GEMM (one row of x: batch 1), on one thread.
//! `cargo run --release --example packed_matvec [ROWS COLS]` (default 2048 512: char's W_h).
use std::time::Instant;

use ndarray::Array2;
use qlstm::nn::packed::PackedMatrix;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("ROWS COLS")).collect();
    let (rows, cols) = (args.first().copied().unwrap_or(2048), args.get(1).copied().unwrap_or(512));
    qlstm::tensor::set_threads(1);
    let mut state = 1u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let codes: Vec<i8> = (0..rows * cols).map(|_| if next() % 2 == 0 { 1 } else { -1 }).collect();
    let x: Vec<f32> = (0..cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
    let (m, _) = PackedMatrix::pack(&codes, rows, cols, vec![1.0; rows], false);
    let dense_t = Array2::from_shape_fn((cols, rows), |(i, j)| codes[j * cols + i] as f32);
    let xa = Array2::from_shape_vec((1, cols), x.clone()).unwrap();
    let mut y = vec![0.0f32; rows];
    let mut yd = Array2::<f32>::zeros((1, rows));
    let reps = (2e9 / (rows * cols) as f64).max(10.0) as usize;
    let mut packed = || m.matvec(&x, &mut y, false);
    let mut dense = || qlstm::tensor::gemm(yd.view_mut(), false, xa.view(), dense_t.view(), 1.0);
    let runs: [(&str, &mut dyn FnMut()); 2] = [("packed", &mut packed), ("dense f32", &mut dense)];
    for (name, f) in runs {
        f();
        let t0 = Instant::now();
        for _ in 0..reps {
            f();
        }
        let s = t0.elapsed().as_secs_f64() / reps as f64;
        println!("{name:>10}: {:.1} µs per product, {:.2} G weights/s", s * 1e6, (rows * cols) as f64 / s / 1e9);
    }
}
