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
        Command::Size { spec, set, csv } => qlstm::report::size_report(&spec, &set, csv).map(|_| ExitCode::SUCCESS),
        Command::Plot { runs, out } => {
            qlstm::report::plot::plot(&runs, &out)?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
