//! Times the element-wise passes between W and a transposed Wᵀ (`zip_tiled`): Q(W) written into
//! Wᵀ as `prepare_weights` does per gate block, and a gradient in Wᵀ added into W's.
//! `cargo run --release --example tiled_pass` (one thread; shapes of word2, char, word1).
use ndarray::{Array2, s};
use qlstm::tensor::{set_threads, zip_tiled};
use std::time::Instant;

fn main() {
    set_threads(1);
    for (name, g, inp) in [("word2 W_h", 2600, 650), ("char W_h", 2048, 512), ("word1 W_h", 1200, 300)] {
        let w = Array2::from_shape_fn((g, inp), |(i, j)| ((i * 7 + j * 13) % 17) as f32 - 8.0);
        let mut eff_t = Array2::<f32>::zeros((inp, g));
        let mut grad = Array2::<f32>::zeros((g, inp));
        let blocks = 4;
        let hidden = g / blocks;
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t = Instant::now();
                f();
                best = best.min(t.elapsed().as_secs_f64());
            }
            best * 1e3
        };
        let q = time(&mut || {
            for k in 0..blocks {
                let rows = s![k * hidden..(k + 1) * hidden, ..];
                let out = eff_t.slice_mut(s![.., k * hidden..(k + 1) * hidden]).reversed_axes();
                zip_tiled(out, w.slice(rows), |o, &x| {
                    *o = if x > 0.0 {
                        1.0
                    } else if x < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                });
            }
        });
        let a = time(&mut || zip_tiled(grad.view_mut(), eff_t.t(), |a, &b| *a += b));
        let n = (g * inp) as f64;
        println!(
            "{name} ({g} x {inp}): sign into Wᵀ {q:.3} ms ({:.2} ns/elem), Wᵀ added into W {a:.3} ms ({:.2} ns/elem)",
            q * 1e6 / n,
            a * 1e6 / n
        );
    }
}
