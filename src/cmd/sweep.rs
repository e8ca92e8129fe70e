//! `qlstm sweep`: specs × a grid of overrides → named runs, run locally N at a time (each
//! resumable, completed ones skipped), or emitted as a job list for GNU parallel or a Slurm
//! job array.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bail;
use crate::error::{Error, Result, io_err};
use crate::run_dir::{RunDir, Status};
use crate::spec::Spec;

/// One run of a sweep: the spec file, the overrides (grid values, `--set`s, the run name).
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub name: String,
    pub spec: PathBuf,
    pub sets: Vec<String>,
    /// The budget the job asks for: train.epochs and train.max_steps (0: no cap).
    pub budget: (usize, usize),
    /// Memory the run needs (bytes, estimated), for cluster requests.
    pub memory: f64,
}

/// Spec files named by the arguments: files as given, directories' *.toml files sorted.
pub fn spec_files(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(a)
                .map_err(|e| io_err(a, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            in_dir.sort();
            if in_dir.is_empty() {
                bail!("{}: no .toml specs in this directory", a.display());
            }
            files.extend(in_dir);
        } else if a.exists() {
            files.push(a.clone());
        } else {
            bail!("{}: no such spec file or directory", a.display());
        }
    }
    files.iter().map(|f| std::path::absolute(f).map_err(|e| io_err(f, e))).collect()
}

/// `key=v1,v2,…` → (key, values).
pub fn parse_grid(g: &str) -> Result<(String, Vec<String>)> {
    let Some((k, vs)) = g.split_once('=') else { bail!("--grid {g}: expected KEY=V1,V2,…") };
    let values: Vec<String> = vs.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
    if k.trim().is_empty() || values.is_empty() {
        bail!("--grid {g}: expected KEY=V1,V2,…");
    }
    Ok((k.trim().to_string(), values))
}

/// Every (spec, grid point) with a deterministic name: the spec's name, then
/// `_<last key segment>-<value>` per grid key in the order given. Each job is validated now,
/// so a typo in a grid fails before anything runs.
pub fn expand(specs: &[PathBuf], grids: &[String], sets: &[String]) -> Result<Vec<Job>> {
    let grids: Vec<(String, Vec<String>)> = grids.iter().map(|g| parse_grid(g)).collect::<Result<_>>()?;
    let mut points: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (k, vs) in &grids {
        points = points
            .iter()
            .flat_map(|p| vs.iter().map(move |v| [p.clone(), vec![(k.clone(), v.clone())]].concat()))
            .collect();
    }
    let mut jobs = Vec::new();
    for spec in specs {
        let base = Spec::load(spec, sets)?;
        for p in &points {
            let mut name = base.name.clone();
            for (k, v) in p {
                name.push_str(&format!("_{}-{}", k.rsplit('.').next().unwrap(), v));
            }
            let mut all: Vec<String> = sets.to_vec();
            all.extend(p.iter().map(|(k, v)| format!("{k}={v}")));
            all.push(format!("name={name}"));
            let resolved = Spec::load(spec, &all)?;
            // The data directory as resolved here (absolute), so that the job finds it from
            // any directory, on any machine that sees this path.
            all.push(format!("data.dir={}", resolved.data.dir));
            let memory = crate::size::memory_estimate(&resolved, resolved.task.standard_vocab());
            let budget = (resolved.train.epochs, resolved.train.max_steps);
            jobs.push(Job { name, spec: spec.clone(), sets: all, budget, memory });
        }
    }
    let mut names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two runs of the sweep are named {}; give the specs different names", w[0]);
    }
    Ok(jobs)
}

/// A run is done when its summary says ok or diverged (both are results).
/// A job is done when its run's summary says diverged, or ok with a budget at least the one
/// asked for now: a larger train.epochs or train.max_steps sends the run on (it resumes from its
/// checkpoint and continues exactly as that budget from scratch would).
pub fn is_complete(out: &Path, job: &Job) -> bool {
    let dir = RunDir::new(out, &job.name);
    let steps = |s: usize| if s == 0 { usize::MAX } else { s };
    match dir.status() {
        Some(Status::Diverged) => true,
        Some(Status::Ok) => dir.read_spec().map_or(true, |done| {
            done.train.epochs >= job.budget.0 && steps(done.train.max_steps) >= steps(job.budget.1)
        }),
        _ => false,
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,+:@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The argument list of `qlstm run` for a job (with --resume: a rerun continues).
pub fn run_args(job: &Job, out: &Path, threads: usize) -> Vec<String> {
    let mut a = vec!["run".to_string(), job.spec.display().to_string()];
    for s in &job.sets {
        a.push("--set".into());
        a.push(s.clone());
    }
    a.extend(["--out".into(), out.display().to_string(), "--threads".into(), threads.to_string(), "--resume".into()]);
    a
}

/// One shell command line per job (for GNU parallel, or a Slurm array).
pub fn command_line(exe: &Path, job: &Job, out: &Path, threads: usize) -> String {
    std::iter::once(exe.display().to_string())
        .chain(run_args(job, out, threads))
        .map(|s| quote(&s))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An sbatch script running one job per array task, with the largest job's resources.
pub fn slurm_script(exe: &Path, jobs: &[Job], out: &Path, threads: usize) -> String {
    let mem_gb = (jobs.iter().map(|j| j.memory).fold(0.0, f64::max) / (1u64 << 30) as f64 * 1.5 + 1.0).ceil() as u64;
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str("# generated by `qlstm sweep --emit slurm`; submit with: sbatch THIS_FILE\n");
    s.push_str("#SBATCH --job-name=qlstm-sweep\n");
    s.push_str(&format!("#SBATCH --array=0-{}\n", jobs.len().saturating_sub(1)));
    s.push_str(&format!("#SBATCH --cpus-per-task={threads}\n"));
    s.push_str(&format!("#SBATCH --mem={mem_gb}G\n"));
    s.push_str(&format!("#SBATCH --output={}\n", quote(&out.join("slurm-%A_%a.out").display().to_string())));
    s.push_str("set -euo pipefail\njobs=(\n");
    for j in jobs {
        s.push_str(&format!("  {}\n", quote(&command_line(exe, j, out, threads))));
    }
    s.push_str(")\neval \"${jobs[$SLURM_ARRAY_TASK_ID]}\"\n");
    s
}

/// Run the jobs locally, `parallel` at a time; completed runs are skipped, others resume.
/// One line per finished run. Returns the number of runs that did not end ok or diverged.
pub fn run_local(exe: &Path, jobs: &[Job], out: &Path, parallel: usize, threads: usize) -> Result<usize> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let todo: Vec<&Job> = jobs.iter().filter(|j| !is_complete(out, j)).collect();
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

/// `qlstm sweep`: expand, then run locally or emit job lists.
pub fn run(
    specs: &[PathBuf],
    grid: &[String],
    set: &[String],
    jobs: usize,
    threads: Option<usize>,
    out: &Path,
    emit: Option<Emit>,
) -> Result<SweepEnd> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = jobs.max(1);
    let threads = threads.unwrap_or((cores / jobs).max(1));
    let list = expand(&spec_files(specs)?, grid, set)?;
    let exe = std::env::current_exe().map_err(|e| Error::new(e.to_string()))?;
    let out = std::path::absolute(out).map_err(|e| Error::new(e.to_string()))?;
    match emit {
        Some(Emit::Parallel) => {
            for j in list.iter().filter(|j| !is_complete(&out, j)) {
                println!("{}", command_line(&exe, j, &out, threads));
            }
            Ok(SweepEnd::Done)
        }
        Some(Emit::Slurm) => {
            std::fs::create_dir_all(&out).map_err(|e| crate::error::io_err(&out, e))?;
            let todo: Vec<_> = list.into_iter().filter(|j| !is_complete(&out, j)).collect();
            let path = out.join("sweep.sbatch");
            crate::io::write_atomic(&path, slurm_script(&exe, &todo, &out, threads).as_bytes())?;
            println!("wrote {} ({} array tasks); submit with: sbatch {}", path.display(), todo.len(), path.display());
            Ok(SweepEnd::Done)
        }
        None => {
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
