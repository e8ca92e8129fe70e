//! The two floors under sequential MNIST's layer norm of W_h·h (H = 100, B = 100, T = 784),
//! measured apart (results/bench/ROUND3.md, session 17):
//! - traffic: the x̂_h window (T × B × 4H f32, 125 MB) written in the forward and read and
//!   overwritten in reverse step order in the backward, each of two threads taking its half of
//!   every step's rows as the layer does, then one thread taking all of them — the stores and
//!   loads alone, no arithmetic;
//! - arithmetic: `Normalizer::forward_rows` and `input_grad_rows_in_place` on one step's 100
//!   rows, one thread, with x̂ in cache (one step's buffer reused) and from a window (each step
//!   its own, as in training);
//! - beside them, plain passes over the same buffers in cache with the kernels' main loads and
//!   stores and no statistics (forward: z and out in, x̂ and out back; backward: dy and x̂ in,
//!   x̂ back): what the arithmetic costs above its traffic (ROUND3.md, session 20).
//!
//! usage: cargo run --release --example norm_floors [ROUNDS]
use std::time::Instant;

use ndarray::{Array2, Array3, Axis};
use qlstm::nn::norm::{Normalization, Normalizer};

const STEPS: usize = 784;
const ROWS: usize = 100;
const H: usize = 100;
const G: usize = 4 * H;

/// ms for the forward's stores and the backward's loads and stores of the window on one thread
/// (`traffic` on two): what the one-thread kernels' times from a window are to be read against.
fn traffic_one_thread(window: &mut [f32]) -> (f64, f64) {
    let start = Instant::now();
    for (t, rows) in window.chunks_exact_mut(ROWS * G).enumerate() {
        rows.fill(t as f32);
    }
    let forward = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    for rows in window.chunks_exact_mut(ROWS * G).rev() {
        rows.iter_mut().for_each(|v| *v = *v * 0.5 + 1.0);
    }
    (forward, start.elapsed().as_secs_f64() * 1e3)
}

/// ms for the forward's stores and the backward's loads and stores of the window, two threads.
fn traffic(window: &mut [f32]) -> (f64, f64) {
    let half = ROWS / 2 * G;
    let mut halves: Vec<Vec<&mut [f32]>> = vec![Vec::new(), Vec::new()];
    for step in window.chunks_exact_mut(ROWS * G) {
        let (a, b) = step.split_at_mut(half);
        halves[0].push(a);
        halves[1].push(b);
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        for mine in halves.iter_mut() {
            s.spawn(move || {
                for (t, rows) in mine.iter_mut().enumerate() {
                    rows.fill(t as f32);
                }
            });
        }
    });
    let forward = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    std::thread::scope(|s| {
        for mine in halves.iter_mut() {
            s.spawn(move || {
                for rows in mine.iter_mut().rev() {
                    rows.iter_mut().for_each(|v| *v = *v * 0.5 + 1.0);
                }
            });
        }
    });
    (forward, start.elapsed().as_secs_f64() * 1e3)
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(3, |s| s.parse().unwrap());
    qlstm::tensor::flush_denormals();
    let mut window = vec![0f32; STEPS * ROWS * G];
    traffic(&mut window); // first touch: page faults out of the timing
    for _ in 0..rounds {
        let (f, b) = traffic(&mut window);
        println!("traffic, two threads: forward {f:.1} ms, backward {b:.1} ms per window");
    }
    for _ in 0..rounds {
        let (f, b) = traffic_one_thread(&mut window);
        println!("traffic, one thread: forward {f:.1} ms, backward {b:.1} ms per window");
    }
    drop(window);

    let norm = Normalizer::<f32>::for_normalization(Normalization::Layer, "n", H, 4, 1).unwrap();
    let z = Array2::<f32>::from_shape_fn((ROWS, G), |(r, c)| ((r * 3 + c) % 17) as f32 * 0.1 - 0.8);
    let dy = Array2::<f32>::from_shape_fn((ROWS, G), |(r, c)| ((r + c) % 13) as f32 * 0.01 - 0.06);
    let mut xhat = Array3::<f32>::zeros((STEPS, ROWS, G));
    let (mut rstd, mut out) = (Array2::<f32>::zeros((ROWS, 4)), Array2::<f32>::zeros((ROWS, G)));
    let mut sums = vec![0f32; 4 * G];
    let mut scratch = Array2::<f32>::zeros((ROWS, G));
    norm.forward_rows(z.view(), scratch.view_mut(), rstd.view_mut(), out.view_mut());
    let xhat_once = scratch.clone();
    for _ in 0..rounds {
        let (mut x, mut o) = (xhat_once.clone(), out.clone());
        let start = Instant::now();
        for _ in 0..STEPS {
            ndarray::Zip::from(&mut x).and(&mut o).and(&z).for_each(|x, o, &v| {
                *x = v * 0.5;
                *o += v;
            });
        }
        let forward = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..STEPS {
            ndarray::Zip::from(&mut x).and(&dy).for_each(|x, &d| *x = *x * 0.5 + d);
        }
        let backward = start.elapsed().as_secs_f64();
        let per = |s: f64| s * 1e6 / STEPS as f64;
        println!(
            "plain passes, one thread, in cache: forward's {:.1} µs, backward's {:.1} µs per step of {ROWS} rows",
            per(forward),
            per(backward)
        );
    }
    for round in 0..=rounds {
        for cached in [true, false] {
            let step = |t: usize| if cached { 0 } else { t };
            let start = Instant::now();
            for t in 0..STEPS {
                norm.forward_rows(z.view(), xhat.index_axis_mut(Axis(0), step(t)), rstd.view_mut(), out.view_mut());
            }
            let forward = start.elapsed().as_secs_f64();
            let mut backward = 0.0;
            for t in (0..STEPS).rev() {
                if cached {
                    // the pass overwrites x̂ with ∂L/∂z: give it x̂ again, outside the timing
                    xhat.index_axis_mut(Axis(0), 0).assign(&xhat_once);
                }
                let start = Instant::now();
                norm.input_grad_rows_in_place(
                    dy.view(),
                    xhat.index_axis_mut(Axis(0), step(t)),
                    rstd.view(),
                    ROWS,
                    &mut sums,
                );
                backward += start.elapsed().as_secs_f64();
            }
            // round 0 touches the window's pages for the first time: not shown
            if round > 0 {
                let per = |s: f64| s * 1e6 / STEPS as f64;
                let place = if cached { "x̂ in cache" } else { "x̂ in a window" };
                println!(
                    "arithmetic, one thread, {place}: forward {:.1} µs, backward {:.1} µs per step of {ROWS} rows",
                    per(forward),
                    per(backward)
                );
            }
        }
    }
}
