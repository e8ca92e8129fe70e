//! What the λ1 diagnostics cost, measured in-process: the time of one `lambda_rows` call
//! (4 warm-started power iterations per layer) against one training step, at PTB-char H = 512.
//! usage: cargo run --release --example diag_cost
use std::time::Instant;

use qlstm::diag::Diagnostics;
use qlstm::model::{Input, Model};
use qlstm::spec::{Spec, Task};
use qlstm::train::Optimizer;
use qlstm::train::schedule::LearningRates;
use qlstm::train::step::{forward_backward, update};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

fn main() {
    qlstm::tensor::set_threads(2);
    for norm in ["none", "weight", "layer"] {
        let mut spec = Spec::defaults(Task::PtbChar);
        spec.model.normalization = norm.parse().unwrap();
        let mut rng = Pcg64Mcg::seed_from_u64(0);
        let mut model: Model<f32> = Model::new(&spec.model_config(50), &mut rng);
        let mut opt = Optimizer::new(spec.train.optimizer);
        let tokens: Vec<u32> = (0..6400).map(|_| rng.random_range(0..50)).collect();
        let mut state = model.initial_state(64);
        let mut diag = Diagnostics::default();
        let (mut step_s, mut diag_s) = (Vec::new(), Vec::new());
        for i in 0..12 {
            let t0 = Instant::now();
            // λ rows read the forward's caches: between forward and backward, as in training
            let mut d = 0.0;
            forward_backward(&mut model, Input::Tokens(&tokens), &tokens, &state, &mut rng, |m| {
                let t = Instant::now();
                diag.lambda_rows(m, i, 1);
                d = t.elapsed().as_secs_f64();
            });
            update(&mut model, &mut opt, 5.0, LearningRates { latent: 0.002, other: 0.002 });
            state = model.final_state();
            if i >= 2 {
                step_s.push(t0.elapsed().as_secs_f64() - d);
                diag_s.push(d);
            }
        }
        step_s.sort_by(f64::total_cmp);
        diag_s.sort_by(f64::total_cmp);
        let (step, d) = (step_s[step_s.len() / 2], diag_s[diag_s.len() / 2]);
        // default interval: 784 windows per epoch / 30 → every 26 steps
        println!(
            "{norm}: step {:.1} ms, lambda_rows {:.2} ms (warm), at every 26 steps: {:.2} % of training time",
            step * 1e3,
            d * 1e3,
            100.0 * d / (26.0 * step)
        );
    }
}
