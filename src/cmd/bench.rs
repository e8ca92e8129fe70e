//! `qlstm bench`: training-step throughput on synthetic inputs of the real shapes, with the
//! same run's measured SGEMM roof, so every figure is also a ratio meaningful on any machine.
//!
//! A step is what `scripts/pytorch_baseline.py` times: forward, backward, clipping (0.25) and
//! an Adam update, no dropout; the state is carried (language models) or zero (MNIST).
//! FLOPs per step follow the baseline (`sweep::cost::train_step_flops`): 3 × Σ_l 2(in_l + H)·G·H
//! per token (G = 4 gate blocks for the LSTM, 3 for the GRU), plus 2·H·out per prediction for
//! the softmax layer (one-hot input counted as a dense GEMM, as PyTorch runs it).

use std::time::Instant;

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use serde::Serialize;

use crate::bail;
use crate::cmd::print_csv_rows;
use crate::error::{Error, Result};
use crate::model::{Input, Model};
use crate::spec::{CellKind, GemmPrecision, Normalization, Optimizer as Kind, Quantizer, Spec, Task};
use crate::tensor::{gemm, threads};
use crate::train::Optimizer;
use crate::train::schedule::LearningRates;
use crate::train::step::{forward_backward, update};

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

/// One line of `qlstm bench`'s CSV.
#[derive(Serialize, Default)]
pub struct BenchRow {
    pub config: &'static str,
    pub quantizer: Quantizer,
    pub normalization: Normalization,
    pub threads: usize,
    pub steps: usize,
    pub median_ms: Fixed<1>,
    pub best_ms: Fixed<1>,
    pub tokens_per_s: Fixed<0>,
    pub gflops: Fixed<1>,
    pub roof_gflops: Fixed<1>,
    pub roof_fraction: Fixed<3>,
    pub peak_rss_mb: Fixed<0>,
    pub cell: CellKind,
    pub gemm_precision: GemmPrecision,
}

/// A number written with `D` decimals (timings are not worth more digits).
#[derive(Default, Clone, Copy)]
pub struct Fixed<const D: usize>(pub f64);

impl<const D: usize> Serialize for Fixed<D> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:.*}", D, self.0))
    }
}

impl BenchConfig {
    pub fn by_name(name: &str) -> Result<BenchConfig> {
        Self::find(&CONFIGS, name, "")
    }

    /// The configuration of `list` named `name`, or an error naming the allowed ones (`mode`:
    /// the flag that chose the list, e.g. " with --inference").
    pub fn find(list: &[BenchConfig], name: &str, mode: &str) -> Result<BenchConfig> {
        match list.iter().find(|c| c.name == name) {
            Some(c) => Ok(*c),
            None => {
                let names: Vec<&str> = list.iter().map(|c| c.name).collect();
                bail!("--config {name}{mode}: allowed: {}, all", names.join(", "))
            }
        }
    }

    /// The spec of this shape with the given cell, quantizer and normalization, no dropout.
    pub fn spec(&self, cell: CellKind, q: Quantizer, n: Normalization) -> Spec {
        let mut s = Spec::defaults(self.task);
        s.model.cell = cell;
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
}

/// Measured SGEMM throughput (GFLOP/s) of this process with the current thread count: the best
/// of a large square product and the configuration's window-sized input projection, through
/// `gemm` (our window kernel on f32 AVX-512, faer elsewhere: the fastest SGEMM the engine has).
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

/// Time `steps` training steps (after 2 warm-up steps) of one configuration and variant.
pub fn bench_one(
    c: &BenchConfig,
    cell: CellKind,
    q: Quantizer,
    n: Normalization,
    precision: GemmPrecision,
    steps: usize,
    roof: f64,
) -> BenchRow {
    let spec = c.spec(cell, q, n).with_precision(precision);
    let mut rng = Pcg64Mcg::seed_from_u64(0);
    let mut model: Model<f32> = Model::new(&spec.model_config(c.vocab), &mut rng);
    let mut opt = Optimizer::new(Kind::Adam);
    let rows = c.batch * c.steps;
    let tokens: Vec<u32> = (0..rows).map(|_| rng.random_range(0..c.vocab as u32)).collect();
    // MNIST's pixels as `data::task` feeds them: one of 256 levels, k/255
    let pixels = Array2::from_shape_fn((rows, 1), |_| f32::from(rng.random_range(0..=255u8)) / 255.0);
    let n_targets = if c.task.is_mnist() { c.batch } else { rows };
    let targets: Vec<u32> = (0..n_targets).map(|_| rng.random_range(0..c.vocab as u32)).collect();
    let mut state = model.initial_state(c.batch);
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let input = if c.task.is_mnist() { Input::Pixels(pixels.view()) } else { Input::Tokens(&tokens) };
        forward_backward(&mut model, input, &targets, &state, &mut rng, |_| {});
        update(&mut model, &mut opt, 0.25, LearningRates { latent: 1e-3, other: 1e-3 });
        state = if c.task.is_mnist() { model.initial_state(c.batch) } else { model.final_state() };
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gflops = crate::sweep::cost::train_step_flops(&spec, c.vocab) / median / 1e9;
    BenchRow {
        config: c.name,
        quantizer: q,
        normalization: n,
        threads: threads(),
        steps,
        median_ms: Fixed(median * 1e3),
        best_ms: Fixed(times[0] * 1e3),
        tokens_per_s: Fixed(rows as f64 / median),
        gflops: Fixed(gflops),
        roof_gflops: Fixed(roof),
        roof_fraction: Fixed(gflops / roof),
        peak_rss_mb: Fixed(peak_rss_mb()),
        cell,
        gemm_precision: precision,
    }
}

/// `qlstm bench`: one config in this process, or every config in a child process each so
/// that each row's peak memory is its own.
pub fn run(
    config: &str,
    cells: &str,
    quantizers: &str,
    norms: &str,
    precision: GemmPrecision,
    steps: usize,
    no_header: bool,
) -> Result<()> {
    let cs = parse_list::<CellKind>(cells, "cell")?;
    let qs = parse_list::<Quantizer>(quantizers, "quantizer")?;
    let ns = parse_list::<Normalization>(norms, "normalization")?;
    if config == "all" {
        if !no_header {
            print_csv_rows::<BenchRow>(&[], true)?;
        }
        let exe = std::env::current_exe().map_err(|e| Error::new(e.to_string()))?;
        for c in CONFIGS {
            let (t, s) = (threads().to_string(), steps.to_string());
            let args =
                ["bench", "--config", c.name, "--cell", cells, "--quantizer", quantizers, "--normalization", norms];
            let status = std::process::Command::new(&exe)
                .args(args)
                .args(["--threads", &t, "--steps", &s, "--gemm-precision", precision.name(), "--no-header"])
                .status()
                .map_err(|e| Error::new(e.to_string()))?;
            if !status.success() {
                bail!("bench {} failed", c.name);
            }
        }
        return Ok(());
    }
    let c = BenchConfig::by_name(config)?;
    c.spec(CellKind::Lstm, Quantizer::Fp, Normalization::None)
        .with_precision(precision)
        .check_host("--gemm-precision")?;
    let roof = sgemm_roof(&c);
    let mut header = !no_header;
    for &cell in &cs {
        for &q in &qs {
            for &n in &ns {
                print_csv_rows(&[bench_one(&c, cell, q, n, precision, steps, roof)], header)?;
                header = false;
            }
        }
    }
    Ok(())
}

/// `fp,bc` → the values, or an error naming the flag and the allowed values.
pub fn parse_list<E: std::str::FromStr<Err = String>>(list: &str, flag: &str) -> Result<Vec<E>> {
    list.split(',').map(|x| x.trim().parse::<E>().map_err(|e| Error::new(format!("--{flag} {e}")))).collect()
}
