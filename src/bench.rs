//! `qlstm bench`: training-step throughput on synthetic inputs of the real shapes, with the
//! same run's measured SGEMM roof, so every figure is also a ratio meaningful on any machine.
//!
//! A step is what `scripts/pytorch_baseline.py` times: forward, backward, clipping (0.25) and
//! an Adam update, no dropout; the state is carried (language models) or zero (MNIST).
//! FLOPs per step follow the baseline: 3 × Σ_l 2(in_l + H)·4H per token, plus 2·H·out per
//! prediction for the softmax layer (one-hot input counted as a dense GEMM, as PyTorch runs it).

use std::time::Instant;

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::bail;
use crate::error::Result;
use crate::model::{Input, Model, State};
use crate::spec::{Normalization, Optimizer as Kind, Quantizer, Spec, Task};
use crate::tensor::{gemm, threads};
use crate::train::Optimizer;
use crate::train::trainer::{forward_backward, update};

/// The benchmark configurations of the speed issue (and of the PyTorch baseline).
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    pub name: &'static str,
    pub task: Task,
    pub vocab: usize,
    pub embedding: usize,
    pub hidden: usize,
    pub layers: usize,
    pub batch: usize,
    pub steps: usize,
}

pub const CONFIGS: [BenchConfig; 4] = [
    BenchConfig {
        name: "char",
        task: Task::PtbChar,
        vocab: 50,
        embedding: 0,
        hidden: 512,
        layers: 1,
        batch: 64,
        steps: 100,
    },
    BenchConfig {
        name: "word1",
        task: Task::PtbWord,
        vocab: 10000,
        embedding: 300,
        hidden: 300,
        layers: 1,
        batch: 20,
        steps: 35,
    },
    BenchConfig {
        name: "word2",
        task: Task::PtbWord,
        vocab: 10000,
        embedding: 650,
        hidden: 650,
        layers: 2,
        batch: 20,
        steps: 35,
    },
    BenchConfig {
        name: "mnist",
        task: Task::SeqMnist,
        vocab: 10,
        embedding: 0,
        hidden: 100,
        layers: 1,
        batch: 100,
        steps: 784,
    },
];

pub const HEADER: &str = "config,quantizer,normalization,threads,steps,median_ms,best_ms,tokens_per_s,gflops,roof_gflops,roof_fraction,peak_rss_mb";

impl BenchConfig {
    pub fn by_name(name: &str) -> Result<BenchConfig> {
        match CONFIGS.iter().find(|c| c.name == name) {
            Some(c) => Ok(*c),
            None => bail!("--config {name}: allowed: char, word1, word2, mnist, all"),
        }
    }

    fn spec(&self, q: Quantizer, n: Normalization) -> Spec {
        let mut s = Spec::defaults(self.task);
        s.model.hidden = self.hidden;
        s.model.layers = self.layers;
        s.model.embedding = self.embedding;
        s.model.quantizer = q;
        s.model.normalization = n;
        s.model.dropout_input = 0.0;
        s.model.dropout_between = 0.0;
        s.model.dropout_output = 0.0;
        s.train.batch_size = self.batch;
        s.train.bptt = self.steps;
        s
    }

    /// Training FLOPs of one step, as the PyTorch baseline counts them.
    pub fn flops(&self) -> f64 {
        let (h, t, b) = (self.hidden as f64, self.steps as f64, self.batch as f64);
        let input = if self.task.uses_embedding() {
            self.embedding
        } else if self.task.is_mnist() {
            1
        } else {
            self.vocab
        };
        let mut per_token = 0.0;
        for l in 0..self.layers {
            let inp = if l == 0 { input as f64 } else { h };
            per_token += 2.0 * (inp + h) * 4.0 * h;
        }
        let out = self.vocab as f64;
        per_token += if self.task.is_mnist() { 2.0 * h * out / t } else { 2.0 * h * out };
        3.0 * per_token * t * b
    }
}

/// Measured SGEMM throughput (GFLOP/s) of this process with the current thread count: the best
/// of a large square product and the configuration's window-sized input projection.
pub fn sgemm_roof(c: &BenchConfig) -> f64 {
    let shapes = [(2048, 2048, 2048), (c.batch * c.steps, c.hidden.max(c.embedding), 4 * c.hidden)];
    let mut best = 0.0f64;
    for (m, k, n) in shapes {
        let a = Array2::<f32>::from_elem((m, k), 0.5);
        let b = Array2::<f32>::from_elem((k, n), 0.25);
        let mut out = Array2::<f32>::zeros((m, n));
        let mut times = Vec::new();
        for _ in 0..6 {
            let t0 = Instant::now();
            gemm(out.view_mut(), false, a.view(), b.view(), 1.0);
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        best = best.max(2.0 * (m * k * n) as f64 / times[1] / 1e9);
    }
    best
}

/// Peak resident memory of this process so far, MB (VmHWM).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Time `steps` training steps (after 2 warm-up steps) of one configuration and variant;
/// returns one CSV row (see `HEADER`).
pub fn bench_one(c: &BenchConfig, q: Quantizer, n: Normalization, steps: usize, roof: f64) -> String {
    let spec = c.spec(q, n);
    let mut rng = Pcg64Mcg::seed_from_u64(0);
    let mut model: Model<f32> = Model::new(&spec, c.vocab, &mut rng);
    let mut opt = Optimizer::new(Kind::Adam, &model.params_mut());
    let rows = c.batch * c.steps;
    let tokens: Vec<u32> = (0..rows).map(|_| rng.random_range(0..c.vocab as u32)).collect();
    let pixels = Array2::from_shape_fn((rows, 1), |_| rng.random_range(0.0f32..1.0));
    let n_targets = if c.task.is_mnist() { c.batch } else { rows };
    let targets: Vec<u32> = (0..n_targets).map(|_| rng.random_range(0..c.vocab as u32)).collect();
    let mut state = model.initial_state(c.batch);
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let input = if c.task.is_mnist() { Input::Pixels(pixels.view()) } else { Input::Tokens(&tokens) };
        forward_backward(&mut model, input, &targets, &state, &mut rng);
        update(&mut model, &mut opt, 0.25, 1e-3, 1e-3);
        state = if c.task.is_mnist() { model.initial_state(c.batch) } else { model.final_state() };
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let _: &State<f32> = &state;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gflops = c.flops() / median / 1e9;
    format!(
        "{},{},{},{},{},{:.1},{:.1},{:.0},{:.1},{:.1},{:.3},{:.0}",
        c.name,
        Quantizer::ALL[q as usize],
        Normalization::ALL[n as usize],
        threads(),
        steps,
        median * 1e3,
        times[0] * 1e3,
        rows as f64 / median,
        gflops,
        roof,
        gflops / roof,
        peak_rss_mb()
    )
}

/// `qlstm bench`: one config in this process, or every config in a child process each so
/// that each row's peak memory is its own.
pub fn run(config: &str, quantizers: &str, norms: &str, steps: usize, no_header: bool) -> Result<()> {
    let parse = |list: &str, allowed: &[&str], what: &str| -> Result<Vec<String>> {
        list.split(',')
            .map(|x| {
                if allowed.contains(&x) {
                    Ok(x.to_string())
                } else {
                    Err(crate::error::Error::new(format!("--{what} {x}: allowed: {}", allowed.join(", "))))
                }
            })
            .collect()
    };
    let qs = parse(quantizers, &Quantizer::ALL, "quantizer")?;
    let ns = parse(norms, &Normalization::ALL, "normalization")?;
    if !no_header {
        println!("{HEADER}");
    }
    if config == "all" {
        let exe = std::env::current_exe().map_err(|e| crate::error::Error::new(e.to_string()))?;
        for c in CONFIGS {
            let t = threads().to_string();
            let s = steps.to_string();
            let args = [
                "bench",
                "--config",
                c.name,
                "--quantizer",
                quantizers,
                "--normalization",
                norms,
                "--threads",
                &t,
                "--steps",
                &s,
                "--no-header",
            ];
            let status = std::process::Command::new(&exe)
                .args(args)
                .status()
                .map_err(|e| crate::error::Error::new(e.to_string()))?;
            if !status.success() {
                return Err(crate::error::Error::new(format!("bench {} failed", c.name)));
            }
        }
        return Ok(());
    }
    let c = BenchConfig::by_name(config)?;
    let roof = sgemm_roof(&c);
    for q in &qs {
        for n in &ns {
            let q: Quantizer = toml::Value::String(q.clone()).try_into().unwrap();
            let n: Normalization = toml::Value::String(n.clone()).try_into().unwrap();
            println!("{}", bench_one(&c, q, n, steps, roof));
        }
    }
    Ok(())
}
