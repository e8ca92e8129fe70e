//! `qlstm bench --inference`: evaluation-mode tokens/s of a language model from its packed file
//! (1- or 2-bit recurrent weights through the bit kernels of `nn::packed`) against the same
//! shape's f32 model, at batch 1 (streaming generation: one token per call, the state carried,
//! as `qlstm sample` runs) and at batch 64 (windows of 64 × 20 tokens, as evaluation runs).
//!
//! Each model is what a user deploys: a randomly initialised spec of the shape is exported with
//! `qlstm export`'s code and loaded back with `--packed`'s, so the f32 row is an exported
//! full-precision model (its weights frozen as dense f32 matrices, multiplied by the GEMM) and
//! the bc/tc rows are packed files. Speed does not depend on the weights' values.
//!
//! Beside tokens/s each row says how many weight bytes one time step reads (all recurrent
//! matrices, the decoder, and for a one-hot input one column of W_x), the rate that makes, and
//! that rate as a fraction of the same run's measured memory read bandwidth: at batch 1 the f32
//! path is a stream of its weights, so the fraction says how close it is to the memory limit;
//! a packed model's weights fit in cache, so its fraction can exceed 1.

use std::collections::HashMap;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::bail;
use crate::cmd::bench::{BenchConfig, Fixed};
use crate::cmd::print_csv_rows;
use crate::error::Result;
use crate::export::packed;
use crate::model::{Input, Model};
use crate::nn::recurrent::FrozenMatrix;
use crate::spec::{CellKind, Normalization, Quantizer, Task};
use crate::tensor::threads;

/// The inference shapes of the packed-model issue; `batch` and `steps` are the batch-64 rows'
/// windows (batch 1 streams one token per call).
pub const INFERENCE_CONFIGS: [BenchConfig; 3] = [
    BenchConfig {
        name: "char",
        task: Task::PtbChar,
        vocab: 50,
        embedding: 0,
        hidden: 512,
        layers: 1,
        batch: 64,
        steps: 20,
    },
    BenchConfig {
        name: "text8",
        task: Task::Text8,
        vocab: 27,
        embedding: 0,
        hidden: 2000,
        layers: 1,
        batch: 64,
        steps: 20,
    },
    BenchConfig {
        name: "word2",
        task: Task::PtbWord,
        vocab: 10000,
        embedding: 650,
        hidden: 650,
        layers: 2,
        batch: 64,
        steps: 20,
    },
];

/// One line of `qlstm bench --inference`'s CSV.
#[derive(Serialize, Default)]
pub struct InferenceRow {
    pub config: &'static str,
    /// f32 (dense, GEMM) or packed (bit planes, masked sums).
    pub weights: &'static str,
    pub quantizer: Quantizer,
    pub batch: usize,
    pub threads: usize,
    /// Median over the timed rounds.
    pub tokens_per_s: Fixed<0>,
    pub best_tokens_per_s: Fixed<0>,
    /// tokens_per_s ÷ the f32 row's of the same config and batch, measured in this run.
    pub speedup_vs_f32: Fixed<2>,
    /// Bytes of the recurrent layers' weights one time step reads (bits and row scales packed).
    pub lstm_weight_bytes: usize,
    /// Bytes of the decoder (f32 in every model) one time step reads.
    pub decoder_weight_bytes: usize,
    /// (lstm + decoder bytes) × time steps per second, GB/s.
    pub weight_gb_per_s: Fixed<2>,
    /// This run's measured read bandwidth over a buffer far larger than the caches, GB/s.
    pub read_bw_gb_per_s: Fixed<2>,
    pub bandwidth_fraction: Fixed<3>,
    /// Recurrent-layer weights applied per second (one multiply-add or masked add each), 1e9/s.
    pub lstm_gweights_per_s: Fixed<2>,
    pub normalization: Normalization,
    pub cell: CellKind,
}

/// The model a user would load: `spec` initialised at random, exported, loaded back.
fn deployed_model(c: &BenchConfig, cell: CellKind, q: Quantizer, n: Normalization) -> Result<Model<f32>> {
    let mut spec = c.spec(cell, q, n);
    spec.name = format!("bench_{}_{cell}_{q}_{n}", c.name);
    let (spec, vocab) = (&spec, c.vocab);
    let mut model: Model<f32> = Model::new(&spec.model_config(vocab), &mut Pcg64Mcg::seed_from_u64(0));
    let file = std::env::temp_dir().join(format!("qlstm-bench-{}-{}.safetensors", std::process::id(), spec.name));
    packed::export(spec, &mut model, &file, HashMap::new())?;
    let loaded = packed::load(&file, &[]);
    let _ = std::fs::remove_file(&file);
    Ok(loaded?.1)
}

/// Weight bytes one time step reads (recurrent layers, decoder) and the recurrent layers'
/// weights applied per token.
fn bytes_per_step(model: &Model<f32>) -> (usize, usize, usize) {
    let mut lstm = 0;
    let mut weights = 0;
    let first_one_hot = model.embedding.is_none();
    for (l, layer) in model.layers.iter().enumerate() {
        let fz = layer.frozen.as_ref().expect("a loaded model has frozen weights");
        for (m, one_hot) in [(&fz.x, l == 0 && first_one_hot), (&fz.h, false)] {
            let (rows, cols, all) = match m {
                FrozenMatrix::Dense(w_t) => (w_t.ncols(), w_t.nrows(), w_t.len() * 4),
                FrozenMatrix::Packed(p) => {
                    (p.rows, p.cols, p.sign.len() + p.nonzero.as_ref().map_or(0, Vec::len) + 4 * p.scale.len())
                }
            };
            weights += if one_hot { rows } else { rows * cols };
            // a one-hot input reads one column: its share of the matrix
            lstm += if one_hot { all.div_ceil(cols) } else { all };
        }
    }
    (lstm, model.decoder.weight.value.len() * 4, weights)
}

/// Best-of-three read bandwidth (GB/s) of a 512 MB buffer, summed by `threads()` threads.
pub fn read_bandwidth_gb_s() -> f64 {
    let n = 128 << 20; // f32s: 512 MB
    let buf = vec![1.0f32; n];
    let t = threads().max(1);
    let chunk = n.div_ceil(t);
    let mut best = 0.0f64;
    let mut check = 0.0f32;
    for _ in 0..3 {
        let t0 = Instant::now();
        let sums: Vec<f32> = std::thread::scope(|s| {
            let parts: Vec<_> = buf.chunks(chunk).map(|c| s.spawn(move || sum16(c))).collect();
            parts.into_iter().map(|p| p.join().unwrap()).collect()
        });
        let secs = t0.elapsed().as_secs_f64();
        check += sums.iter().sum::<f32>();
        best = best.max((n * 4) as f64 / secs / 1e9);
    }
    assert!(check > 0.0); // the sums are used, so the reads happen
    best
}

/// Σ x with 16 independent accumulators (vectorizable: no order is imposed across lanes).
fn sum16(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// Tokens per second of each of `rounds` rounds (median, best).
fn time_rounds(rounds: usize, tokens_per_round: usize, mut round: impl FnMut()) -> (f64, f64) {
    round(); // warm-up: workspaces sized, weights in cache where they fit
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            round();
            tokens_per_round as f64 / t0.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[rates.len() - 1])
}

/// tokens/s of one model at one batch size: (median, best, time steps per token).
/// `window`: the time steps of one call at batch > 1 (and the in-window slot cycle at batch 1).
fn measure(
    model: &mut Model<f32>,
    vocab: usize,
    batch: usize,
    window: usize,
    tokens: usize,
    rounds: usize,
) -> (f64, f64, f64) {
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    if batch == 1 {
        let ids: Vec<u32> = (0..tokens).map(|_| rng.random_range(0..vocab as u32)).collect();
        let (med, best) = time_rounds(rounds, tokens, || {
            let mut state = model.zero_state(1);
            for (t, id) in ids.iter().enumerate() {
                std::hint::black_box(model.predict(Input::Tokens(std::slice::from_ref(id)), &state, t % window));
                state = model.final_state();
            }
        });
        (med, best, 1.0)
    } else {
        let windows = tokens.div_ceil(batch * window).max(1);
        let ids: Vec<u32> = (0..batch * window).map(|_| rng.random_range(0..vocab as u32)).collect();
        let (med, best) = time_rounds(rounds, windows * batch * window, || {
            let mut state = model.zero_state(batch);
            for _ in 0..windows {
                std::hint::black_box(model.predict(Input::Tokens(&ids), &state, 0));
                state = model.final_state();
            }
        });
        (med, best, 1.0 / batch as f64)
    }
}

/// `qlstm bench --inference` from the command line's comma-separated lists.
pub fn run_args(
    config: &str,
    cells: &str,
    quantizers: &str,
    norms: &str,
    rounds: usize,
    no_header: bool,
) -> Result<()> {
    use crate::cmd::bench::parse_list;
    let cs = parse_list::<CellKind>(cells, "cell")?;
    let qs = parse_list::<Quantizer>(quantizers, "quantizer")?;
    let ns = parse_list::<Normalization>(norms, "normalization")?;
    run(config, &cs, &qs, &ns, rounds, no_header)
}

/// `qlstm bench --inference`: for each config, the f32 model and the packed bc and tc models
/// (or the quantizers asked for) at batch 1 and 64, one CSV row each.
pub fn run(
    config: &str,
    cells: &[CellKind],
    quantizers: &[Quantizer],
    norms: &[Normalization],
    rounds: usize,
    no_header: bool,
) -> Result<()> {
    let configs: Vec<BenchConfig> = if config == "all" {
        INFERENCE_CONFIGS.to_vec()
    } else {
        vec![BenchConfig::find(&INFERENCE_CONFIGS, config, " with --inference")?]
    };
    if let Some(q) = quantizers.iter().find(|q| !matches!(q, Quantizer::Fp | Quantizer::Bc | Quantizer::Tc)) {
        bail!("--quantizer {q} with --inference: allowed: fp (the f32 model), bc, tc");
    }
    let bw = read_bandwidth_gb_s();
    let mut header = !no_header;
    for c in configs {
        for (&cell, &n) in cells.iter().flat_map(|c| norms.iter().map(move |n| (c, n))) {
            // the f32 model first: every packed row's speed-up is against it
            let mut order = vec![Quantizer::Fp];
            order.extend(quantizers.iter().copied().filter(|&q| q != Quantizer::Fp));
            let mut models = Vec::new();
            for &q in &order {
                models.push((q, deployed_model(&c, cell, q, n)?));
            }
            for batch in [1, c.batch] {
                // about the same work per round for every shape: ~2e9 weight applications
                let mut f32_rate = f64::NAN;
                for (q, model) in models.iter_mut() {
                    let (lstm_bytes, dec_bytes, weights) = bytes_per_step(model);
                    let tokens = ((2e9 / weights as f64) as usize).clamp(16, 4096);
                    let tokens = if batch == 1 { tokens.min(512) } else { tokens.max(batch * c.steps) };
                    let (med, best, steps_per_token) = measure(model, c.vocab, batch, c.steps, tokens, rounds);
                    if *q == Quantizer::Fp {
                        f32_rate = med;
                    }
                    let gb = (lstm_bytes + dec_bytes) as f64 * med * steps_per_token / 1e9;
                    let row = InferenceRow {
                        config: c.name,
                        weights: if *q == Quantizer::Fp { "f32" } else { "packed" },
                        quantizer: *q,
                        batch,
                        threads: threads(),
                        tokens_per_s: Fixed(med),
                        best_tokens_per_s: Fixed(best),
                        speedup_vs_f32: Fixed(med / f32_rate),
                        lstm_weight_bytes: lstm_bytes,
                        decoder_weight_bytes: dec_bytes,
                        weight_gb_per_s: Fixed(gb),
                        read_bw_gb_per_s: Fixed(bw),
                        bandwidth_fraction: Fixed(gb / bw),
                        lstm_gweights_per_s: Fixed(weights as f64 * med / 1e9),
                        normalization: n,
                        cell,
                    };
                    print_csv_rows(&[row], header)?;
                    header = false;
                }
            }
        }
    }
    Ok(())
}
