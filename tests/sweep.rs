//! Sweeps and tables: grid expansion and names, resuming a sweep, the job lists it emits (run
//! by GNU parallel here), and the paper-layout table on a fixture results directory.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{bin, data_set, root, scratch};
use qlstm::sweep;

fn tiny_sets() -> Vec<String> {
    vec![data_set(), "model.hidden=16".into(), "train.max_steps=3".into(), "diagnostics.enabled=false".into()]
}

#[test]
fn grid_expansion_and_deterministic_names() {
    let spec = root().join("configs/paper/ptb_char_fp_none.toml");
    let grids = ["model.quantizer=fp,bc".to_string(), "model.normalization=none,layer,weight".to_string()];
    let jobs = sweep::expand(std::slice::from_ref(&spec), &grids, &tiny_sets()).unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ptb_char_fp_none_quantizer-fp_normalization-none",
            "ptb_char_fp_none_quantizer-fp_normalization-layer",
            "ptb_char_fp_none_quantizer-fp_normalization-weight",
            "ptb_char_fp_none_quantizer-bc_normalization-none",
            "ptb_char_fp_none_quantizer-bc_normalization-layer",
            "ptb_char_fp_none_quantizer-bc_normalization-weight",
        ]
    );
    assert_eq!(
        sweep::expand(std::slice::from_ref(&spec), &grids, &tiny_sets()).unwrap(),
        jobs,
        "same input, same jobs"
    );
    assert!(jobs[4].sets.contains(&"model.normalization=layer".to_string()));
    // a bad grid value fails before anything runs, naming the key
    let e = sweep::expand(&[spec], &["model.quantizer=fp,xnor".into()], &[]).unwrap_err().0;
    assert!(e.contains("model.quantizer") && e.contains("xnor"), "{e}");
}

fn write_summary(dir: &Path, status: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("summary.csv"), format!("name,status\nx,{status}\n")).unwrap();
}

#[test]
fn a_sweep_resumes_skipping_complete_runs() {
    let out = scratch("resume");
    let spec = root().join("configs/paper/ptb_char_fp_none.toml");
    let grid = "model.quantizer=fp,bc,tc";
    // pretend bc finished (ok), tc diverged (a result) and fp was interrupted
    write_summary(&out.join("ptb_char_fp_none_quantizer-bc"), "ok");
    write_summary(&out.join("ptb_char_fp_none_quantizer-tc"), "diverged");
    write_summary(&out.join("ptb_char_fp_none_quantizer-fp"), "interrupted");
    let mut args = vec![
        "sweep".to_string(),
        spec.display().to_string(),
        "--grid".into(),
        grid.into(),
        "--out".into(),
        out.display().to_string(),
    ];
    for s in tiny_sets() {
        args.extend(["--set".into(), s]);
    }
    let o = bin().args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("3 runs, 2 complete, 1 to run"), "{text}");
    assert!(text.contains("ptb_char_fp_none_quantizer-fp: ok"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with('[')).count(), 1, "one line per finished run");
    let o = bin().args(&args).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 runs, 3 complete, 0 to run"));
    // a larger budget sends finished runs on (the two that have a spec.toml to compare with)
    args.extend(["--set".into(), "train.max_steps=5".into()]);
    let o = bin().args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("3 runs, 2 complete, 1 to run"), "{text}");
    let fp = qlstm::run_dir::RunDir::new(&out, "ptb_char_fp_none_quantizer-fp").read_summary().unwrap().unwrap();
    assert_eq!(fp.steps, 5, "resumed from 3 steps to the new budget");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn emitted_job_lists_run_under_gnu_parallel_and_slurm_scripts_parse() {
    let out = scratch("emit");
    let spec = root().join("configs/paper/ptb_char_fp_none.toml");
    let mut args =
        vec!["sweep".to_string(), spec.display().to_string(), "--grid".into(), "model.quantizer=fp,bc,tc".into()];
    args.extend(["--out".into(), out.display().to_string(), "--threads".into(), "1".into()]);
    for s in tiny_sets() {
        args.extend(["--set".into(), s]);
    }
    let o = bin().args(&args).args(["--emit", "slurm"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = out.join("sweep.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("#SBATCH --array=0-2") && text.contains("#SBATCH --cpus-per-task=1"), "{text}");
    let tasks =
        text.lines().filter(|l| l.trim_start().split_once(") exec ").is_some_and(|(i, _)| i.parse::<usize>().is_ok()));
    assert_eq!(tasks.count(), 3, "one array task per run");
    assert!(Command::new("bash").arg("-n").arg(&script).status().unwrap().success(), "bash -n");

    let o = bin().args(&args).args(["--emit", "parallel"]).output().unwrap();
    let list = String::from_utf8(o.stdout).unwrap();
    assert_eq!(list.lines().count(), 3);
    // GNU parallel (Debian package `parallel`; scripts/setup.sh installs it) runs the list for
    // real, from a directory that is neither the repository nor the output: every path in it is
    // absolute.
    let jobs = out.join("jobs.txt");
    std::fs::write(&jobs, &list).unwrap();
    let elsewhere = scratch("emit-elsewhere");
    let st = Command::new("parallel")
        .args(["--will-cite", "-j", "2", "--halt", "now,fail=1", "-a", jobs.to_str().unwrap()])
        .current_dir(&elsewhere)
        .output()
        .expect("GNU parallel is installed (scripts/setup.sh installs it)");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    for q in ["fp", "bc", "tc"] {
        assert!(qlstm::run_dir::RunDir::new(&out, &format!("ptb_char_fp_none_quantizer-{q}")).is_complete(), "{q} ran");
    }
    let _ = std::fs::remove_dir_all(&out);
}

const SUMMARY_HEADER: &str = "name,task,layers,hidden,quantizer,normalization,epochs_run,steps,best_epoch,metric,valid_metric,test_metric,test_loss_nats,size_kb,train_tokens_per_s,wall_s,status,diverged_step";

/// `qlstm table DIR --layout LAYOUT` as CSV: its text and its rows by column name.
fn table_csv(dir: &Path, layout: &str) -> (String, Vec<HashMap<String, String>>) {
    let o = bin().args(["table", dir.to_str().unwrap(), "--layout", layout]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let rows = csv::Reader::from_reader(text.as_bytes()).deserialize().map(|r| r.unwrap()).collect();
    (text, rows)
}

/// A cell of a `table_csv` row.
fn col(row: &HashMap<String, String>, c: &str) -> String {
    row[c].clone()
}

/// A fixture run directory: `spec` and one summary row (made-up numbers).
fn fixture_run(run: &Path, spec: &qlstm::spec::Spec, summary_row: &str) {
    std::fs::create_dir_all(run).unwrap();
    std::fs::write(run.join("spec.toml"), spec.to_toml()).unwrap();
    std::fs::write(run.join("summary.csv"), format!("{SUMMARY_HEADER}\n{summary_row}\n")).unwrap();
}

#[test]
fn table_lays_out_runs_in_the_papers_order() {
    let out = scratch("table");
    // a fixture run: ptb_char H=512 bc/weight, with made-up numbers
    let spec = qlstm::spec::Spec::load(&root().join("configs/ptb_bc_weight.toml"), &[]).unwrap();
    fixture_run(
        &out.join("some/where/ptb_bc_weight"),
        &spec,
        "ptb_bc_weight,ptb_char,1,512,bc,weight,3,2352,3,bpc,1.5,1.5,1.04,165,30000,600,ok,",
    );
    let (_, rows) = table_csv(&out, "table2");
    // the paper's order is the reference file's order
    let reference = std::fs::read_to_string(root().join("results/reference/table2_char.csv")).unwrap();
    let mut rr = csv::Reader::from_reader(reference.as_bytes());
    let rh = rr.headers().unwrap().clone();
    let refs: Vec<csv::StringRecord> = rr.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), refs.len());
    for (ours, paper) in rows.iter().zip(&refs) {
        let p = |c: &str| paper[rh.iter().position(|x| x == c).unwrap()].to_string();
        assert_eq!(
            (col(ours, "dataset"), col(ours, "quantizer"), col(ours, "normalization")),
            (p("dataset"), p("quantizer"), p("normalization"))
        );
        assert_eq!(col(ours, "paper"), p("paper_test_bpc"));
    }
    let filled: Vec<&HashMap<String, String>> = rows.iter().filter(|r| !col(r, "ours").is_empty()).collect();
    assert_eq!(filled.len(), 1, "only the cell that ran is filled");
    let f = filled[0];
    assert_eq!(
        (col(f, "dataset").as_str(), col(f, "quantizer").as_str(), col(f, "normalization").as_str()),
        ("ptb_char", "bc", "weight")
    );
    assert_eq!(col(f, "ours"), "1.500");
    assert_eq!(col(f, "steps"), "2352");
    assert_eq!(col(f, "paper_size_kb"), col(f, "ours_size_kb"));
    let _ = std::fs::remove_dir_all(&out);
}

/// Table 4 lays out every seq_mnist cell; permuted-MNIST rows appear only for cells that ran,
/// with the error metric.
#[test]
fn table4_shows_permuted_mnist_rows_only_where_they_ran() {
    let out = scratch("table4");
    let load = |name: &str| qlstm::spec::Spec::load(&root().join(format!("configs/long/{name}.toml")), &[]).unwrap();
    fixture_run(
        &out.join("pmnist_bc_layer"),
        &load("pmnist_bc_layer"),
        "pmnist_bc_layer,pmnist,1,100,bc,layer,10,5000,10,error_pct,12.5,12.25,0.4,8,300000,3600,ok,",
    );
    fixture_run(
        &out.join("seq_mnist_fp_layer"),
        &load("seq_mnist_fp_layer"),
        "seq_mnist_fp_layer,seq_mnist,1,100,fp,layer,10,5000,10,error_pct,3.5,3.25,0.1,170,300000,3600,ok,",
    );
    let (text, rows) = table_csv(&out, "table4");
    let of = |d: &str| rows.iter().filter(|r| col(r, "dataset") == d).collect::<Vec<_>>();
    assert_eq!(of("seq_mnist").len(), 15, "every seq_mnist cell, run or not");
    let p = of("pmnist");
    assert_eq!(p.len(), 1, "only the permuted cell that ran: {text}");
    assert_eq!(
        (col(p[0], "quantizer"), col(p[0], "metric"), col(p[0], "ours")),
        ("bc".into(), "error_pct".into(), "12.250".into())
    );
    let fp_layer =
        of("seq_mnist").into_iter().find(|r| col(r, "quantizer") == "fp" && col(r, "normalization") == "layer");
    assert_eq!(col(fp_layer.unwrap(), "ours"), "3.250", "the permuted run does not fill the sequential cell");
    let _ = std::fs::remove_dir_all(&out);
}

/// Wait until `path` exists, up to `secs`.
#[test]
fn seeds_layout_gives_each_cells_spread_over_its_seeds() {
    let out = scratch("seeds-table");
    let base = qlstm::spec::Spec::load(&root().join("configs/ptb_bc_weight.toml"), &[]).unwrap();
    // three seeds of one cell (one diverged), and one run of another cell (other normalization)
    let runs: [(&str, u64, &str, f64); 4] = [
        ("a/cell_seed1111", 1111, "ok", 1.80),
        ("b/cell_seed2222", 2222, "ok", 1.78),
        ("b/cell_seed3333", 3333, "diverged", f64::NAN),
        ("b/cell_seed4444", 4444, "ok", 1.82),
    ];
    for (i, (dir, seed, status, test)) in runs.iter().enumerate() {
        let mut spec = base.clone();
        spec.seed = *seed;
        spec.name = format!("run{i}");
        fixture_run(
            &out.join(dir),
            &spec,
            &format!("run{i},ptb_char,1,512,bc,weight,1,784,1,bpc,{test},{test},1.0,165,30000,600,{status},"),
        );
    }
    let mut other = base.clone();
    other.model.normalization = qlstm::nn::Normalization::Layer;
    fixture_run(
        &out.join("c/other"),
        &other,
        "other,ptb_char,1,512,bc,layer,1,784,1,bpc,1.7,1.7,1.0,165,30000,600,ok,",
    );
    // the cell again with bf16 products: a cell of its own, named by its precision
    let bf16 = base.clone().with_precision(qlstm::spec::GemmPrecision::Bf16);
    fixture_run(&out.join("d/bf16"), &bf16, "bf16,ptb_char,1,512,bc,weight,1,784,1,bpc,1.9,1.9,1.0,165,30000,600,ok,");
    let (text, rows) = table_csv(&out, "seeds");
    assert_eq!(rows.len(), 3, "{text}");
    let w = &rows[0];
    assert_eq!((col(w, "normalization"), col(w, "runs"), col(w, "not_ok")), ("weight".into(), "3".into(), "1".into()));
    assert_eq!(col(w, "seeds"), "1111 2222 3333 4444");
    assert_eq!(col(w, "values"), "1.800 1.780 1.820");
    assert_eq!((col(w, "mean"), col(w, "std")), ("1.800".into(), "0.0200".into()));
    assert_eq!((col(w, "min"), col(w, "max"), col(w, "range")), ("1.780".into(), "1.820".into(), "0.040".into()));
    assert_eq!(col(w, "gemm_precision"), "f32");
    let l = &rows[1];
    assert_eq!((col(l, "normalization"), col(l, "runs"), col(l, "std")), ("layer".into(), "1".into(), String::new()));
    let b = &rows[2];
    assert_eq!(
        (col(b, "normalization"), col(b, "gemm_precision"), col(b, "values")),
        ("weight".into(), "bf16".into(), "1.900".into())
    );
    let md = bin().args(["table", out.to_str().unwrap(), "--layout", "seeds", "--markdown"]).output().unwrap();
    assert!(String::from_utf8(md.stdout).unwrap().starts_with("| dataset | cell |"));
    let _ = std::fs::remove_dir_all(&out);
}

fn wait_for(path: &Path, secs: u64) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(secs) {
        if path.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[test]
fn status_reports_runs_in_every_state() {
    let out = scratch("status");
    let spec = root().join("configs/paper/ptb_char_fp_none.toml");
    let sets = [data_set(), "train.max_steps=40".into(), "train.checkpoint_every=5".into()];
    let mut args =
        vec!["sweep".to_string(), spec.display().to_string(), "--grid".into(), "model.hidden=16,24,256,320,48".into()];
    for s in &sets {
        args.extend(["--set".into(), s.clone()]);
    }
    args.extend([
        "--threads".into(),
        "1".into(),
        "--out".into(),
        out.display().to_string(),
        "--emit".into(),
        "parallel".into(),
    ]);
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 5);
    let job =
        |h: &str| lines.iter().find(|l| l.contains(&format!("name=ptb_char_fp_none_hidden-{h} "))).unwrap().clone();
    let bash = |line: String| Command::new("bash").args(["-c", &line]).output().unwrap();
    // ok; diverged (the same job with a huge learning rate)
    assert!(bash(job("16")).status.success());
    assert_eq!(bash(format!("{} --set train.lr=1e6 --set train.clip=0", job("24"))).status.code(), Some(3));
    // interrupted: SIGINT once the first checkpoint is there
    let mut slow = Command::new("bash")
        .args(["-c", &format!("exec {}", job("256"))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(&out.join("ptb_char_fp_none_hidden-256/checkpoint.safetensors"), 120));
    Command::new("kill").args(["-INT", &slow.id().to_string()]).status().unwrap();
    assert_eq!(slow.wait().unwrap().code(), Some(130));
    // running: holds its directory while --status looks
    let mut busy = Command::new("bash")
        .args(["-c", &format!("exec {}", job("320"))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(&out.join("ptb_char_fp_none_hidden-320/.lock"), 60));
    let o = bin().args(["sweep", "--status", out.to_str().unwrap()]).output().unwrap();
    let _ = busy.kill();
    let _ = busy.wait();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "non-zero while runs are unfinished:\n{text}");
    for (h, state) in [("16", "ok"), ("24", "diverged"), ("256", "interrupted"), ("320", "running"), ("48", "pending")]
    {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("ptb_char_fp_none_hidden-{h} ")))
            .unwrap_or_else(|| panic!("{h} in {text}"));
        assert!(line.split_whitespace().nth(1) == Some(state), "{h}: {line}");
        if state == "ok" {
            assert!(line.contains("40/40") && line.contains("best valid bpc"), "{line}");
        }
    }
    assert!(text.contains("5 runs: 1 ok, 1 diverged, 1 interrupted, 1 running, 1 pending; about"), "{text}");
    assert!(text.contains(&format!("pid {}", busy.id())), "who holds the running one:\n{text}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `kill -INT` of a background sweep (no terminal to signal its runs): the sweep passes the
/// signal on as a stop request, its run stops at a checkpoint with an `interrupted` summary,
/// nothing new starts;
/// the same command again resumes that run before starting the one that never ran, though the
/// resumed one comes second in the grid.
#[test]
fn interrupting_a_sweep_stops_its_runs_and_the_rerun_resumes_the_furthest_first() {
    let out = scratch("sweep_sigint");
    let spec = root().join("configs/paper/ptb_char_fp_none.toml");
    let sweep_cmd = |grid: &str| {
        let mut c = bin();
        c.args(["sweep", spec.to_str().unwrap(), "--grid", grid, "--jobs", "1", "--threads", "1"])
            .args(["--out", out.to_str().unwrap()]);
        for s in [data_set(), "train.max_steps=40".into(), "train.checkpoint_every=5".into()] {
            c.args(["--set", &s]);
        }
        c
    };
    let slow = out.join("ptb_char_fp_none_hidden-256");
    let mut first = sweep_cmd("model.hidden=256,16").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_for(&slow.join("checkpoint.safetensors"), 120), "the first run checkpoints");
    Command::new("kill").args(["-INT", &first.id().to_string()]).status().unwrap();
    let t0 = std::time::Instant::now();
    let end = first.wait().unwrap();
    assert_eq!(end.code(), Some(130), "an interrupted sweep exits as an interrupted run does");
    assert!(t0.elapsed().as_secs() < 60, "its run stopped after a step, not at its end");
    let run = qlstm::run_dir::RunDir::new(&out, "ptb_char_fp_none_hidden-256");
    assert_eq!(run.status().map(|s| s.name()), Some("interrupted"));
    let step = run.checkpoint_step();
    assert!((5..40).contains(&step), "stopped mid-run, at step {step}");
    assert!(!out.join("ptb_char_fp_none_hidden-16").join("summary.csv").exists(), "nothing new started");
    // the rerun, with the grid's order reversed: the interrupted run is resumed first
    let o = sweep_cmd("model.hidden=16,256").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    let finished: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(finished.len(), 2, "{text}");
    assert!(finished[0].contains("hidden-256: ok"), "the furthest-along run first:\n{text}");
    assert!(std::fs::read_to_string(slow.join("run.log")).unwrap().contains("resum"), "it resumed");
    let _ = std::fs::remove_dir_all(&out);
}
