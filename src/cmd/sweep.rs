//! `qlstm sweep`: specs × a grid of overrides → named runs (`crate::sweep`), run here N at a
//! time (each resumable, completed ones skipped), or emitted as a job list for GNU parallel or
//! a Slurm job array; and `--status`, where a sweep stands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result, io_err};
use crate::run_dir::RunDir;
use crate::sweep::slurm::{self, SlurmOptions};
use crate::sweep::status::{self, Manifest, State};
use crate::sweep::{Job, command_line, expand, is_complete, run_args, spec_files};

/// Run the jobs locally, `parallel` at a time; completed runs are skipped, others resume,
/// those furthest along (by checkpoint step) first, so that a resumed sweep lands its nearly
/// finished runs before starting new ones. One line per finished run. Returns the number of
/// runs that did not end ok or diverged.
///
/// A SIGINT or SIGTERM to the sweep, whoever sent it (a terminal, `kill`, a scheduler), is
/// passed on to its runs as a stop request (`signal::request_stop`), which never counts as
/// the second signal that makes a run exit at once: a Ctrl-C, which the terminal sends the
/// runs too, or a scheduler's SIGTERM to every process still stops them cleanly. They stop
/// after their current step, write a checkpoint and an `interrupted` summary, and the same
/// command resumes them.
pub fn run_local(exe: &Path, jobs: &[Job], out: &Path, parallel: usize, threads: usize) -> Result<usize> {
    let mut todo: Vec<(u64, &Job)> = jobs
        .iter()
        .filter(|j| !is_complete(out, j))
        .map(|j| (RunDir::new(out, &j.name).checkpoint_step(), j))
        .collect();
    // stable: fresh runs (step 0) keep the order given
    todo.sort_by_key(|&(step, _)| std::cmp::Reverse(step));
    let todo: Vec<&Job> = todo.into_iter().map(|(_, j)| j).collect();
    println!(
        "sweep: {} runs, {} complete, {} to run ({} at a time, {} threads each)",
        jobs.len(),
        jobs.len() - todo.len(),
        todo.len(),
        parallel,
        threads
    );
    let mut pending = todo.into_iter();
    let mut running: Vec<(Child, &Job)> = Vec::new();
    let mut forwarded = false;
    let (mut done, mut failed) = (0usize, 0usize);
    let total = jobs.len();
    let skipped = total - pending.len();
    loop {
        while running.len() < parallel && !crate::signal::interrupted() {
            let Some(job) = pending.next() else { break };
            let dir = RunDir::new(out, &job.name);
            dir.create()?;
            let log_path = dir.file(RunDir::LOG);
            let log = std::fs::File::create(&log_path).map_err(|e| io_err(&log_path, e))?;
            let err = log.try_clone().map_err(|e| io_err(&log_path, e))?;
            let child = Command::new(exe)
                .args(run_args(job, out, threads))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| Error::new(format!("cannot start {}: {e}", exe.display())))?;
            running.push((child, job));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if crate::signal::interrupted() && !forwarded {
            forwarded = true;
            for (child, _) in &running {
                crate::signal::request_stop(child.id());
            }
        }
        let mut i = 0;
        while i < running.len() {
            if let Some(exit) = running[i].0.try_wait().map_err(|e| Error::new(e.to_string()))? {
                let (_, job) = running.remove(i);
                done += 1;
                let status = RunDir::new(out, &job.name).status();
                if !status.is_some_and(|s| s.is_result()) {
                    failed += 1;
                }
                let st = status.map_or("failed", |s| s.name());
                let detail = summary_detail(out, &job.name);
                println!(
                    "[{}/{}] {}: {st}{detail} (exit {})",
                    skipped + done,
                    total,
                    job.name,
                    exit.code().map_or("signal".into(), |c| c.to_string())
                );
            } else {
                i += 1;
            }
        }
    }
    if crate::signal::interrupted() {
        println!("sweep: interrupted; run the same command again to resume");
    }
    Ok(failed + pending.len())
}

fn summary_detail(out: &Path, name: &str) -> String {
    match RunDir::new(out, name).read_summary() {
        Ok(Some(s)) => format!(", test {} {}, {} steps", s.metric, s.test_metric, s.steps),
        _ => String::new(),
    }
}

/// Where to send a sweep's runs instead of running them here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    Parallel,
    Slurm,
}

/// How a local sweep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepEnd {
    Done,
    Unfinished,
    Interrupted,
}

/// What `qlstm sweep` was asked to do.
pub struct SweepArgs<'a> {
    pub specs: &'a [PathBuf],
    pub grid: &'a [String],
    pub set: &'a [String],
    pub jobs: usize,
    pub threads: Option<usize>,
    pub out: &'a Path,
    pub emit: Option<Emit>,
    /// `#SBATCH` arguments passed through (`--slurm-arg=--partition=…`).
    pub slurm_args: &'a [String],
}

/// `qlstm sweep`: expand, then run locally or emit job lists.
pub fn run(a: &SweepArgs) -> Result<SweepEnd> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = a.jobs.max(1);
    let list = expand(&spec_files(a.specs)?, a.grid, a.set)?;
    let exe = std::env::current_exe().map_err(|e| Error::new(e.to_string()))?;
    let out = std::path::absolute(a.out).map_err(|e| Error::new(e.to_string()))?;
    std::fs::create_dir_all(&out).map_err(|e| io_err(&out, e))?;
    Manifest::record(&out, &list)?;
    let todo: Vec<&Job> = list.iter().filter(|j| !is_complete(&out, j)).collect();
    // Emitted jobs run elsewhere: by default each gets the threads its shapes use well.
    let emitted_threads = a.threads.unwrap_or_else(|| todo.iter().map(|j| j.plan.threads).max().unwrap_or(1));
    match a.emit {
        Some(Emit::Parallel) => {
            for j in todo {
                println!("{}", command_line(&exe, j, &out, emitted_threads));
            }
            Ok(SweepEnd::Done)
        }
        Some(Emit::Slurm) => {
            let logs = out.join("slurm");
            std::fs::create_dir_all(&logs).map_err(|e| io_err(&logs, e))?;
            let with_done: Vec<(Job, u64)> =
                todo.iter().map(|j| ((*j).clone(), RunDir::new(&out, &j.name).checkpoint_step())).collect();
            let name = out.file_name().map_or("sweep".into(), |n| n.to_string_lossy().into_owned());
            let opts = SlurmOptions {
                throttle: jobs,
                threads: emitted_threads,
                extra: a.slurm_args,
                job_name: format!("qlstm-{name}"),
            };
            let path = out.join("sweep.sbatch");
            crate::io::write_atomic(&path, slurm::script(&exe, &with_done, &out, &opts).as_bytes())?;
            println!(
                "wrote {} ({} array tasks); submit with: sbatch {}",
                path.display(),
                with_done.len(),
                path.display()
            );
            Ok(SweepEnd::Done)
        }
        None => {
            let threads = a.threads.unwrap_or((cores / jobs).max(1));
            if jobs * threads > cores {
                eprintln!("qlstm: note: {jobs} jobs × {threads} threads exceeds {cores} cores");
            }
            crate::signal::install()?;
            let unfinished = run_local(&exe, &list, &out, jobs, threads)?;
            Ok(if crate::signal::interrupted() {
                SweepEnd::Interrupted
            } else if unfinished > 0 {
                SweepEnd::Unfinished
            } else {
                SweepEnd::Done
            })
        }
    }
}

/// `qlstm sweep --status DIR`: a line per run, the totals and the CPU time to go; Done only
/// when every run is ok or diverged.
pub fn print_status(out: &Path) -> Result<SweepEnd> {
    let rows = status::status(out)?;
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4);
    for r in &rows {
        let best = r.best.map_or(String::new(), |(m, v, e)| format!(", best valid {m} {v:.3} (epoch {e})"));
        let holder = r.holder.as_ref().map_or(String::new(), |h| format!(", {h}"));
        println!(
            "{:<width$}  {:<11} {:>8}/{:<8} steps{best}{holder}",
            r.name,
            r.state.name(),
            r.steps_done,
            r.steps_total
        );
    }
    let count = |s: State| rows.iter().filter(|r| r.state == s).count();
    let counts: Vec<String> = State::ALL.iter().map(|&s| format!("{} {s}", count(s))).collect();
    let hours = rows.iter().map(|r| r.cpu_s_left).sum::<f64>() / 3600.0;
    println!(
        "{} runs: {}; about {hours:.1} CPU hours to go (cost model at {} GFLOP/s per thread)",
        rows.len(),
        counts.join(", "),
        crate::sweep::cost::GFLOPS_PER_THREAD
    );
    Ok(if rows.iter().all(|r| r.state.is_done()) { SweepEnd::Done } else { SweepEnd::Unfinished })
}
