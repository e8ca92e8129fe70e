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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qlstm: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Run { spec, set, out, threads } => {
            let spec = Spec::load(&spec, &set)?;
            let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            qlstm::tensor::set_threads(n);
            let mut trainer = qlstm::train::Trainer::new(spec)?;
            let outcome = trainer.run(&out)?;
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
            if s.status != "ok" {
                return Err(qlstm::error::Error::new(format!("{}: run {}", s.name, s.status)));
            }
            Ok(())
        }
        Command::Size { spec, set, csv } => qlstm::report::size_report(&spec, &set, csv),
        Command::Plot { runs, out } => {
            qlstm::report::plot::plot(&runs, &out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}
