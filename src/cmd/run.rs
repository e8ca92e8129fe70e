//! `qlstm run`: train one spec, print its summary line, and exit with its status.

use std::path::Path;
use std::process::ExitCode;

use crate::cmd::progress::Progress;
use crate::cmd::{DIVERGED_EXIT, interrupted_exit};
use crate::error::Result;
use crate::run_dir::Status;
use crate::spec::Spec;
use crate::train::Trainer;

pub fn run(spec: &Path, sets: &[String], out: &Path, threads: Option<usize>, resume: bool) -> Result<ExitCode> {
    let spec = Spec::load(spec, sets)?;
    crate::cmd::set_threads(threads);
    crate::signal::install()?;
    let mut trainer = Trainer::new(spec)?.with_observer(Box::new(Progress::new()));
    let outcome = trainer.run(out, resume)?;
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
