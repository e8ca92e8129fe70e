//! `qlstm run`: train one spec, print its summary line, and exit with its status.

use std::path::Path;
use std::process::ExitCode;

use crate::cmd::progress::Progress;
use crate::cmd::{DIVERGED_EXIT, interrupted_exit};
use crate::data::TaskData;
use crate::error::{Error, Result};
use crate::run_dir::{RunDir, Status};
use crate::spec::{GemmPrecision, Spec};
use crate::train::Trainer;

pub fn run(spec: &Path, sets: &[String], out: &Path, threads: Option<usize>, resume: bool) -> Result<ExitCode> {
    let origin = spec.display().to_string();
    let spec = Spec::load(spec, sets)?;
    spec.check_host(&origin)?;
    if spec.train.gemm_precision == GemmPrecision::Bf16 && spec.task.is_mnist() {
        // measured: fp/layer 56.5 → 78.0 % test error after one epoch (results/bench/ROUND3.md)
        eprintln!(
            "qlstm: note: {origin}: `train.gemm_precision` = \"bf16\" cost accuracy on sequential MNIST where it was measured (h rounded at each of 784 steps); \"f32\" is the safe choice for this task"
        );
    }
    crate::cmd::set_threads(threads);
    crate::signal::install()?;
    let name = spec.name.clone();
    let mut trainer = Trainer::new(spec)?.with_observer(Box::new(Progress::new(&name)));
    let outcome = trainer.run(&absolute(out)?, resume)?;
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
        outcome.dir.path().display()
    );
    Ok(match s.status {
        Status::Interrupted => {
            eprintln!("qlstm: {} interrupted at step {}; continue with --resume", s.name, s.steps);
            interrupted_exit()
        }
        Status::Diverged => ExitCode::from(DIVERGED_EXIT),
        Status::Ok => ExitCode::SUCCESS,
    })
}

fn absolute(out: &Path) -> Result<std::path::PathBuf> {
    std::path::absolute(out).map_err(|e| Error::new(format!("--out {}: {e}", out.display())))
}

/// `qlstm run --dry-run`: what the run would be, without training: the resolved spec, where
/// it would write, the model size, the memory estimate and the number of steps.
pub fn dry_run(spec: &Path, sets: &[String], out: &Path, threads: Option<usize>, resume: bool) -> Result<()> {
    let origin = spec.display().to_string();
    let spec = Spec::load(spec, sets)?;
    spec.check_host(&origin)?;
    let data = TaskData::load(&spec);
    let vocab = data.as_ref().map_or(spec.task.standard_vocab(), |d| d.vocab());
    let dir = RunDir::new(&absolute(out)?, &spec.name);
    print!("{}", spec.to_toml());
    println!();
    println!("# run directory: {}", dir.path().display());
    if resume && dir.checkpoint().exists() {
        println!("# --resume: continues from {}", dir.checkpoint().display());
    } else if dir.has_results() {
        println!("# a run is there already: without --resume it starts afresh and removes its checkpoints");
    }
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("# threads: {threads}");
    println!("# size: {} KB (docs/SPEC.md §4)", crate::size::size_kb(&spec, vocab));
    println!("# memory: about {:.2} GiB", crate::size::memory_estimate(&spec, vocab) / (1u64 << 30) as f64);
    match &data {
        Ok(d) => {
            let per_epoch = d.windows_per_epoch(&spec);
            let all = per_epoch * spec.train.epochs;
            let steps = if spec.train.max_steps > 0 { all.min(spec.train.max_steps) } else { all };
            println!(
                "# steps: {steps} ({per_epoch} per epoch × {} epochs{})",
                spec.train.epochs,
                if steps < all {
                    format!(", capped by train.max_steps = {}", spec.train.max_steps)
                } else {
                    String::new()
                }
            );
        }
        Err(e) => println!("# steps: unknown, the data is not there: {e}"),
    }
    Ok(())
}
