//! The `qlstm` command line: parse, dispatch to a subcommand, print errors — nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use qlstm::error::Result;
use qlstm::spec::Spec;

#[derive(Parser)]
#[command(name = "qlstm", version, about = "Train quantized LSTMs on CPU (Hou et al., NeurIPS 2019)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one experiment spec; writes <out>/<name>/{spec.toml,metrics.csv,summary.csv}.
    Run {
        /// The TOML experiment spec.
        spec: PathBuf,
        /// Override a field, e.g. --set model.hidden=128 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Output root directory.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Threads for the GEMMs (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Continue from <out>/<name>/checkpoint.safetensors if it exists.
        #[arg(long)]
        resume: bool,
    },
    /// Recompute a trained model's metric from a run directory (its best.safetensors) or a
    /// checkpoint file.
    Eval {
        /// A run directory or a .safetensors checkpoint.
        path: PathBuf,
        #[arg(long, value_enum, default_value = "test")]
        split: SplitArg,
        /// Override a field of the stored spec, e.g. --set data.dir=/data (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Time training steps on synthetic inputs of the benchmark shapes (CSV on stdout).
    Bench {
        /// char | word1 | word2 | mnist | all (each config in its own process, for its peak memory).
        #[arg(long, default_value = "all")]
        config: String,
        /// Comma-separated quantizers.
        #[arg(long, default_value = "fp")]
        quantizer: String,
        /// Comma-separated normalizations.
        #[arg(long, default_value = "none")]
        normalization: String,
        #[arg(long)]
        threads: Option<usize>,
        /// Timed steps (after 2 warm-up steps); the median is reported.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Leave out the CSV header.
        #[arg(long, hide = true)]
        no_header: bool,
    },
    /// Draw λ1 against step and ‖∂ξ/∂h_t‖ against t for one or more run directories.
    Plot {
        /// Run directories (each with lambda.csv and grad_norm.csv).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output file: .svg (default) or .png.
        #[arg(long, default_value = "diagnostics.svg")]
        out: PathBuf,
    },
    /// Print the model size of a spec (SPEC §4) without training.
    Size {
        spec: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// CSV: layer,part,count,bits,bytes,kb, ending with the total.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Valid,
    Test,
}

/// Exit status of a run that diverged (a result, but not a success).
const DIVERGED_EXIT: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qlstm: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    qlstm::tensor::set_threads(n);
}

fn dispatch(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Run { spec, set, out, threads, resume } => {
            let spec = Spec::load(&spec, &set)?;
            set_threads(threads);
            qlstm::signal::install()?;
            let mut trainer = qlstm::train::Trainer::new(spec)?;
            let outcome = trainer.run(&out, resume)?;
            let s = &outcome.summary;
            println!(
                "{}: status {}, best epoch {}, valid {} {:.4}, test {} {:.4}, {} KB, {:.0} train tok/s -> {}",
                s.name,
                s.status,
                s.best_epoch,
                s.metric,
                s.valid_metric,
                s.metric,
                s.test_metric,
                s.size_kb,
                s.train_tokens_per_s,
                outcome.dir.display()
            );
            Ok(match s.status.as_str() {
                "interrupted" => {
                    eprintln!("qlstm: {} interrupted at step {}; continue with --resume", s.name, s.steps);
                    ExitCode::from(qlstm::signal::INTERRUPTED_EXIT as u8)
                }
                "diverged" => ExitCode::from(DIVERGED_EXIT),
                _ => ExitCode::SUCCESS,
            })
        }
        Command::Eval { path, split, set, threads } => {
            set_threads(threads);
            let split = match split {
                SplitArg::Valid => qlstm::train::trainer::Split::Valid,
                SplitArg::Test => qlstm::train::trainer::Split::Test,
            };
            qlstm::report::eval::eval(&path, split, &set)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { config, quantizer, normalization, threads, steps, no_header } => {
            set_threads(threads);
            bench(&config, &quantizer, &normalization, steps, no_header)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Size { spec, set, csv } => qlstm::report::size_report(&spec, &set, csv).map(|_| ExitCode::SUCCESS),
        Command::Plot { runs, out } => {
            qlstm::report::plot::plot(&runs, &out)?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `qlstm bench`: one config in this process, or every config in a child process each so
/// that each row's peak memory is its own.
fn bench(config: &str, quantizers: &str, norms: &str, steps: usize, no_header: bool) -> Result<()> {
    use qlstm::bench::{BenchConfig, CONFIGS, HEADER, bench_one, sgemm_roof};
    use qlstm::spec::{Normalization, Quantizer};
    let parse = |list: &str, allowed: &[&str], what: &str| -> Result<Vec<String>> {
        list.split(',')
            .map(|x| {
                if allowed.contains(&x) {
                    Ok(x.to_string())
                } else {
                    Err(qlstm::error::Error::new(format!("--{what} {x}: allowed: {}", allowed.join(", "))))
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
        let exe = std::env::current_exe().map_err(|e| qlstm::error::Error::new(e.to_string()))?;
        for c in CONFIGS {
            let t = qlstm::tensor::threads().to_string();
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
                .map_err(|e| qlstm::error::Error::new(e.to_string()))?;
            if !status.success() {
                return Err(qlstm::error::Error::new(format!("bench {} failed", c.name)));
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
