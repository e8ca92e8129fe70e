//! A sweep's runs: spec files × a grid of overrides → named jobs, each validated before anything
//! runs, with its resources (memory, threads, CPU time) estimated; what counts as done; the
//! command line that runs a job from any directory.

use std::path::{Path, PathBuf};

use crate::bail;
use crate::error::{Result, io_err};
use crate::run_dir::{RunDir, Status};
use crate::spec::Spec;
use crate::sweep::cost::{DataCounts, Plan};

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
    /// Steps, threads and CPU time the run needs (estimated).
    pub plan: Plan,
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
    let mut counts = DataCounts::cache();
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
            let counts = counts.get(&resolved)?;
            let memory = crate::size::memory_estimate(&resolved, counts.vocab);
            let budget = (resolved.train.epochs, resolved.train.max_steps);
            let plan = Plan::of(&resolved, counts);
            jobs.push(Job { name, spec: spec.clone(), sets: all, budget, memory, plan });
        }
    }
    let mut names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two runs of the sweep are named {}; give the specs different names", w[0]);
    }
    Ok(jobs)
}

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

pub(crate) fn quote(s: &str) -> String {
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
