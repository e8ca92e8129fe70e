//! The `qlstm` command line: parse the arguments, hand them to `qlstm::cmd`, turn the outcome
//! into an exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use qlstm::cmd;
use qlstm::error::Result;
use qlstm::spec::GemmPrecision;
use qlstm::train::Split;

#[derive(Parser)]
#[command(name = "qlstm", version, about = "Train quantized LSTMs on CPU (Hou et al., NeurIPS 2019)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A count of at least one (threads, jobs).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096)
}

#[derive(Subcommand)]
enum Command {
    /// Train one experiment spec; writes <out>/<name>/ (spec.toml, metrics.csv, summary.csv,
    /// lambda.csv, grad_norm.csv, checkpoints).
    Run {
        /// The TOML experiment spec (e.g. configs/quickstart.toml).
        spec: PathBuf,
        /// Override a spec field, e.g. --set model.hidden=128 (repeatable; validated as the file is).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Output root: the run goes to <OUT>/<name>/.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Threads for the GEMMs and the batch split (default: all cores).
        #[arg(long, value_parser = at_least_one())]
        threads: Option<usize>,
        /// Continue from <out>/<name>/checkpoint.safetensors if it exists (a larger
        /// train.epochs or train.max_steps extends a finished run exactly).
        #[arg(long)]
        resume: bool,
        /// Print the resolved spec, the model size, the memory estimate and the step count, and
        /// exit without training.
        #[arg(long)]
        dry_run: bool,
    },
    /// Recompute a trained model's metric from a run directory (its best.safetensors), a
    /// checkpoint file, or a packed export (--packed).
    Eval {
        /// A run directory or a .safetensors checkpoint.
        #[arg(required_unless_present = "packed", conflicts_with = "packed")]
        path: Option<PathBuf>,
        /// Evaluate a `qlstm export` file instead, through its 1-/2-bit kernels.
        #[arg(long, value_name = "FILE")]
        packed: Option<PathBuf>,
        /// The split to evaluate.
        #[arg(long, value_enum, default_value = "test")]
        split: SplitArg,
        /// Override a field of the stored spec, e.g. --set data.dir=/data (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Threads for the GEMMs (default: all cores).
        #[arg(long, value_parser = at_least_one())]
        threads: Option<usize>,
    },
    /// Run (or resume) specs × a grid of overrides; emit them for GNU parallel or Slurm; or show
    /// where a sweep stands (--status).
    Sweep {
        /// Spec files, or directories of them.
        #[arg(required_unless_present = "status")]
        specs: Vec<PathBuf>,
        /// KEY=V1,V2,… (repeatable): every combination runs, named <spec>_<key>-<value>….
        #[arg(long = "grid", value_name = "KEY=V1,V2")]
        grid: Vec<String>,
        /// Override a field in every run (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Runs at once (local); cores are divided between them.
        #[arg(long, default_value_t = 1, value_parser = at_least_one())]
        jobs: usize,
        /// Threads per run (default: cores / jobs).
        #[arg(long, value_parser = at_least_one())]
        threads: Option<usize>,
        /// Output root: each run goes to <OUT>/<run name>/.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Print a job list for GNU parallel, or write <OUT>/sweep.sbatch (a Slurm job array),
        /// instead of running.
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// An #SBATCH argument for --emit slurm, e.g. --slurm-arg=--partition=cpu (repeatable;
        /// replaces ours of the same option, e.g. --slurm-arg=--time=2:00:00).
        #[arg(long = "slurm-arg", value_name = "ARG", allow_hyphen_values = true)]
        slurm_arg: Vec<String>,
        /// Show every run of the sweep in DIR (state, steps, best metric, CPU time to go) and
        /// exit non-zero while any is unfinished.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["specs", "emit"])]
        status: Option<PathBuf>,
    },
    /// Lay out runs as one of the paper's tables, with the published numbers beside ours.
    Table {
        /// Directories searched (recursively) for runs.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// The paper's table to lay out (gru: the GRU's cells beside our LSTM's), or seeds: one
        /// row per cell of runs that differ only in their seed, with n, mean, std, min, max.
        #[arg(long, value_parser = ["table2", "table3", "table4", "two_layer", "gru", "seeds"])]
        layout: String,
        /// Write here (missing folders are created) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Markdown instead of CSV.
        #[arg(long)]
        markdown: bool,
    },
    /// Time training steps on synthetic inputs of the benchmark shapes (CSV on stdout); with
    /// --inference, tokens/s of exported models (f32 vs packed 1- and 2-bit) at batch 1 and 64.
    Bench {
        /// char | word1 | word2 | mnist | all (each config in its own process, for its peak memory);
        /// with --inference: char (H 512) | text8 (H 2000) | word2 (2 × 650) | all.
        #[arg(long, default_value = "all")]
        config: String,
        /// Comma-separated cells: lstm, gru.
        #[arg(long, default_value = "lstm")]
        cell: String,
        /// Comma-separated quantizers (default fp; with --inference fp,bc,tc: fp is the f32 model,
        /// bc and tc are packed).
        #[arg(long)]
        quantizer: Option<String>,
        /// Time inference (evaluation-mode forward passes of exported models) instead of training.
        #[arg(long)]
        inference: bool,
        /// Comma-separated normalizations.
        #[arg(long, default_value = "none")]
        normalization: String,
        /// Threads (default: all cores).
        #[arg(long, value_parser = at_least_one())]
        threads: Option<usize>,
        /// Timed steps (after 2 warm-up steps); the median is reported. With --inference: timed
        /// rounds (after one warm-up round) per row.
        #[arg(long, default_value_t = 10, value_parser = at_least_one())]
        steps: usize,
        /// Precision of the recurrent per-step products: f32, or bf16 (AMX-BF16, or AVX512-BF16 on AMD; as
        /// `[train] gemm_precision`).
        #[arg(long, default_value = "f32")]
        gemm_precision: GemmPrecision,
        /// Leave out the CSV header.
        #[arg(long, hide = true)]
        no_header: bool,
    },
    /// Draw λ1 against step and ‖∂ξ/∂h_t‖ against t for one or more run directories; with
    /// --curves, their validation metric per epoch beside the paper's published numbers.
    Plot {
        /// Run directories (each with lambda.csv and grad_norm.csv; with --curves, metrics.csv).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Learning curves instead: validation BPC / perplexity / error per epoch, one line per
        /// run, and the paper's number for each run's cell (LSTM tables, where it published
        /// one) as a dashed level.
        #[arg(long, conflicts_with = "grad_step")]
        curves: bool,
        /// Output file: .svg (default) or .png; other formats are refused.
        #[arg(long, default_value = "diagnostics.svg")]
        out: PathBuf,
        /// Gradient panel: the trace recorded nearest this optimizer step (default: the last;
        /// 0 shows the initial model, where plain bc/tc explode).
        #[arg(long, value_name = "STEP")]
        grad_step: Option<u64>,
    },
    /// Write a run's model as a packed file: 1 bit per weight (bc/bwn/lab) or 2 (tc/twn/lat),
    /// with its scales and the full-precision parts; prints its bytes by part.
    Export {
        /// The run directory.
        run: PathBuf,
        /// The file to write (default: <RUN>/packed.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
        /// best: the model at the best validation loss; last: the last checkpoint.
        #[arg(long, value_enum, default_value = "best")]
        checkpoint: WhichArg,
        /// packed: the 1-/2-bit file; torch: a state dict for torch.nn.LSTM / nn.GRU
        /// (normalization none or weight).
        #[arg(long, value_enum, default_value = "packed")]
        format: FormatArg,
    },
    /// Generate text from a trained language model (a run directory, or --packed FILE).
    Sample {
        /// The run directory.
        #[arg(required_unless_present = "packed", conflicts_with = "packed")]
        run: Option<PathBuf>,
        /// Sample from a `qlstm export` file, through its 1-/2-bit kernels.
        #[arg(long, value_name = "FILE")]
        packed: Option<PathBuf>,
        /// Tokens to generate.
        #[arg(long, default_value_t = 300)]
        len: usize,
        /// Softmax temperature (0: always the most likely token).
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Text the model reads before it generates (default: the start of a line).
        #[arg(long)]
        prime: Option<String>,
        /// The same seed gives the same text.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Threads (default: all cores).
        #[arg(long, value_parser = at_least_one())]
        threads: Option<usize>,
    },
    /// Print the model size of a spec (docs/SPEC.md §4) without training.
    Size {
        /// The TOML experiment spec.
        spec: PathBuf,
        /// Override a spec field (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// CSV: layer,part,count,bits,bytes,kb,size_kb, ending with the total (size_kb: the tables' rounded KB).
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Emit {
    Parallel,
    Slurm,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Packed,
    Torch,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WhichArg {
    Best,
    Last,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Valid,
    Test,
}

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

fn dispatch(command: Command) -> Result<ExitCode> {
    let ok = |()| ExitCode::SUCCESS;
    match command {
        Command::Run { spec, set, out, threads, resume, dry_run: true } => {
            cmd::run::dry_run(&spec, &set, &out, threads, resume).map(ok)
        }
        Command::Run { spec, set, out, threads, resume, dry_run: false } => {
            cmd::run::run(&spec, &set, &out, threads, resume)
        }
        Command::Eval { path, packed, split, set, threads } => {
            let split = match split {
                SplitArg::Valid => Split::Valid,
                SplitArg::Test => Split::Test,
            };
            match (path, packed) {
                (_, Some(file)) => cmd::eval::eval_packed(&file, split, &set, threads).map(ok),
                (Some(path), None) => cmd::eval::eval(&path, split, &set, threads).map(ok),
                (None, None) => unreachable!("clap requires one"),
            }
        }
        Command::Export { run, out, checkpoint, format } => {
            let which = match checkpoint {
                WhichArg::Best => cmd::export::Which::Best,
                WhichArg::Last => cmd::export::Which::Last,
            };
            let format = match format {
                FormatArg::Packed => cmd::export::Format::Packed,
                FormatArg::Torch => cmd::export::Format::Torch,
            };
            cmd::export::export(&run, out.as_deref(), which, format).map(ok)
        }
        Command::Sample { run, packed, len, temperature, prime, seed, threads } => {
            cmd::set_threads(threads);
            let source = match (&run, &packed) {
                (_, Some(f)) => cmd::sample::Source::Packed(f),
                (Some(r), None) => cmd::sample::Source::Run(r),
                (None, None) => unreachable!("clap requires one"),
            };
            let args = cmd::sample::SampleArgs { source, len, temperature, prime: prime.as_deref(), seed };
            cmd::sample::sample(&args).map(ok)
        }
        Command::Sweep { specs, grid, set, jobs, threads, out, emit, slurm_arg, status } => {
            let emit = emit.map(|e| match e {
                Emit::Parallel => cmd::sweep::Emit::Parallel,
                Emit::Slurm => cmd::sweep::Emit::Slurm,
            });
            let end = match status {
                Some(dir) => cmd::sweep::print_status(&dir)?,
                None => {
                    let args = cmd::sweep::SweepArgs {
                        specs: &specs,
                        grid: &grid,
                        set: &set,
                        jobs,
                        threads,
                        out: &out,
                        emit,
                        slurm_args: &slurm_arg,
                    };
                    cmd::sweep::run(&args)?
                }
            };
            Ok(match end {
                cmd::sweep::SweepEnd::Done => ExitCode::SUCCESS,
                cmd::sweep::SweepEnd::Unfinished => ExitCode::FAILURE,
                cmd::sweep::SweepEnd::Interrupted => cmd::interrupted_exit(),
            })
        }
        Command::Table { results, layout, out, markdown } => {
            cmd::table::table(&results, &layout, out.as_deref(), markdown).map(ok)
        }
        Command::Bench {
            config,
            cell,
            quantizer,
            inference,
            normalization,
            threads,
            steps,
            gemm_precision,
            no_header,
        } => {
            cmd::set_threads(threads);
            if inference {
                let quantizer = quantizer.as_deref().unwrap_or("fp,bc,tc");
                cmd::bench_inference::run_args(&config, &cell, quantizer, &normalization, steps, no_header).map(ok)
            } else {
                let quantizer = quantizer.as_deref().unwrap_or("fp");
                cmd::bench::run(&config, &cell, quantizer, &normalization, gemm_precision, steps, no_header).map(ok)
            }
        }
        Command::Size { spec, set, csv } => cmd::size::size(&spec, &set, csv).map(ok),
        Command::Plot { runs, out, grad_step, curves } => cmd::plot::plot(&runs, &out, grad_step, curves).map(ok),
    }
}
