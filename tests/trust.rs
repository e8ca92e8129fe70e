//! Runs a user can trust, through the binary: eval computes what training reported, a larger
//! budget extends a run exactly, two runs cannot share a directory, paths follow one rule from
//! any directory, and what a user reads (CSV headers, progress, epoch lines, tables, figures,
//! help, messages, dry runs) is complete and clear.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, data_set, root, scratch};

fn spec() -> String {
    root().join("configs/paper/ptb_char_fp_none.toml").display().to_string()
}

/// `qlstm run` of the PTB-char recipe at H = 32 on one thread with extra `--set`s.
fn run(out: &Path, sets: &[&str], extra: &[&str]) -> Output {
    let mut c = bin();
    c.args(["run", &spec(), "--set", &data_set(), "--set", "model.hidden=32", "--threads", "1"]);
    c.args(["--out", out.to_str().unwrap()]);
    for s in sets {
        c.args(["--set", s]);
    }
    c.args(extra).output().unwrap()
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// A CSV file's rows as column → value, without the columns that time the run.
fn rows(path: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let h = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            h.iter()
                .zip(rec.unwrap().iter())
                .filter(|(h, _)| !["tokens_per_s", "wall_s", "train_tokens_per_s", "name"].contains(h))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// `qlstm eval DIR`: (value, loss) of the test split.
fn eval(dir: &Path, cwd: &Path, extra: &[&str]) -> (f64, f64) {
    let o =
        bin().args(["eval", dir.to_str().unwrap(), "--threads", "1"]).args(extra).current_dir(cwd).output().unwrap();
    ok(&o, "eval");
    let text = String::from_utf8_lossy(&o.stdout);
    let line: Vec<&str> = text.lines().nth(1).unwrap().split(',').collect();
    (line[4].parse().unwrap(), line[5].parse().unwrap())
}

#[test]
fn eval_recomputes_the_reported_metric_for_every_quantizer() {
    let out = scratch("eval7");
    for q in ["fp", "bc", "bwn", "lab", "tc", "twn", "lat"] {
        let name = format!("name={q}");
        let quant = format!("model.quantizer={q}");
        ok(&run(&out, &[&name, &quant, "train.max_steps=30", "model.normalization=batch_separate"], &[]), q);
        let dir = out.join(q);
        let reported: f64 = rows(&dir.join("summary.csv"))[0]["test_metric"].parse().unwrap();
        // from another directory, with nothing but the run directory: the spec inside it holds
        // the absolute data path
        let (value, _) = eval(&dir, Path::new("/"), &[]);
        assert_eq!(value, reported, "{q}: eval {value} vs reported {reported}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_larger_budget_continues_exactly_as_that_budget_from_scratch() {
    let out = scratch("budget");
    // lr decays after epoch 1, so the schedule at an epoch end matters too
    let base =
        ["model.quantizer=lat", "train.lr_decay_start=1", "diagnostics.lambda_every=50", "diagnostics.grad_every=100"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { base.iter().chain(extra).copied().collect() };
    ok(&run(&out, &with(&["name=straight", "train.epochs=2", "train.max_steps=1000"]), &[]), "straight");
    // one complete epoch, then a step budget that ends mid-epoch 2, then a larger one
    ok(&run(&out, &with(&["name=extended", "train.epochs=1"]), &[]), "leg 1");
    ok(&run(&out, &with(&["name=extended", "train.epochs=2", "train.max_steps=900"]), &["--resume"]), "leg 2");
    assert_eq!(rows(&out.join("extended/metrics.csv")).len(), 2, "epoch 1 and the budget's evaluation at step 900");
    let o = run(&out, &with(&["name=extended", "train.epochs=2", "train.max_steps=1000"]), &["--resume"]);
    ok(&o, "leg 3");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("at step 900 (epoch 2, window 116)"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    for f in ["metrics.csv", "summary.csv", "lambda.csv", "grad_norm.csv"] {
        assert_eq!(rows(&out.join("extended").join(f)), rows(&out.join("straight").join(f)), "{f}");
    }
    assert_eq!(eval(&out.join("extended"), &out, &[]), eval(&out.join("straight"), &out, &[]), "best.safetensors");
    let _ = std::fs::remove_dir_all(&out);
}

/// Wait until `path` exists and is not empty, up to `secs`.
fn wait_for(path: &Path, secs: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn two_runs_cannot_share_a_directory_and_a_killed_one_does_not_block() {
    let out = scratch("lock");
    let mut c = bin();
    c.args(["run", &spec(), "--set", &data_set(), "--set", "model.hidden=256", "--set", "name=busy"]);
    c.args(["--threads", "1", "--out", out.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut first = c.spawn().unwrap();
    assert!(wait_for(&out.join("busy/.lock"), 60), "the first run holds the directory");
    let t0 = Instant::now();
    let o = run(&out, &["name=busy", "train.max_steps=5"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && t0.elapsed() < Duration::from_secs(10), "the second run failed at once: {err}");
    assert!(err.contains("another qlstm run") && err.contains(&format!("pid {}", first.id())), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // killed before its first epoch ends: its CSVs have their headers, and its lock is gone
    Command::new("kill").args(["-KILL", &first.id().to_string()]).status().unwrap();
    first.wait().unwrap();
    let metrics = std::fs::read_to_string(out.join("busy/metrics.csv")).unwrap();
    assert!(metrics.starts_with("epoch,step,lr,train_loss,valid_loss"), "{metrics:?}");
    let lambda = std::fs::read_to_string(out.join("busy/lambda.csv")).unwrap();
    assert!(lambda.starts_with("step,epoch,layer,lambda1"), "{lambda:?}");
    ok(&run(&out, &["name=busy", "train.max_steps=5"], &[]), "after the holder was killed");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn paths_follow_one_rule_from_any_directory() {
    let tmp = scratch("paths");
    std::os::unix::fs::symlink(root().join("data"), tmp.join("mydata")).unwrap();
    // a relative data.dir and --out, resolved against the directory qlstm starts in
    let o = bin()
        .args(["run", &spec(), "--set", "data.dir=mydata", "--set", "model.hidden=16", "--set", "train.max_steps=3"])
        .args(["--threads", "1", "--out", "rel"])
        .current_dir(&tmp)
        .output()
        .unwrap();
    ok(&o, "relative data.dir");
    let dir = tmp.join("rel/ptb_char_fp_none");
    let stored = std::fs::read_to_string(dir.join("spec.toml")).unwrap();
    assert!(stored.contains(&format!("dir = \"{}\"", tmp.join("mydata").display())), "{stored}");
    // eval from anywhere, with nothing but the run directory
    eval(&dir, Path::new("/"), &[]);
    // $QLSTM_DATA when the spec has no data.dir; the default `data` is not there in tmp
    let plain = tmp.join("plain.toml");
    std::fs::write(&plain, "task = \"ptb_char\"\n[model]\nhidden = 16\n[train]\nmax_steps = 3\n").unwrap();
    let mut c = bin();
    c.args(["run", plain.to_str().unwrap(), "--threads", "1", "--out", "env"]).current_dir(&tmp);
    let o = c.env("QLSTM_DATA", root().join("data")).output().unwrap();
    ok(&o, "QLSTM_DATA");
    // without it: the message names the file tried, how the directory was derived, and the
    // script (by its full path) that fetches the data there
    let mut c = bin();
    c.args(["run", plain.to_str().unwrap(), "--out", "none"]).current_dir(&tmp).env_remove("QLSTM_DATA");
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let tried = tmp.join("data/ptb_char/ptb.char.train.txt");
    assert!(!o.status.success() && err.contains(&tried.display().to_string()), "{err}");
    assert!(err.contains("resolved against the directory qlstm started in") && err.contains("QLSTM_DATA"), "{err}");
    assert!(err.contains(&root().join("scripts/get_data.sh").display().to_string()), "{err}");
    // the job list a sweep emits runs from any directory
    let o = bin()
        .args([
            "sweep",
            &spec(),
            "--grid",
            "model.quantizer=fp,bc",
            "--set",
            "data.dir=mydata",
            "--set",
            "model.hidden=16",
        ])
        .args(["--set", "train.max_steps=2", "--threads", "1", "--out", "swept", "--emit", "parallel"])
        .current_dir(&tmp)
        .output()
        .unwrap();
    ok(&o, "emit");
    let elsewhere = scratch("paths-elsewhere");
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let st = Command::new("bash").args(["-c", line]).current_dir(&elsewhere).output().unwrap();
        ok(&st, line);
    }
    assert!(tmp.join("swept/ptb_char_fp_none_quantizer-bc/summary.csv").exists());
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn progress_lines_without_a_terminal_and_epoch_lines_with_units() {
    let out = scratch("progress");
    let o = bin()
        .args(["run", &spec(), "--set", &data_set(), "--set", "model.hidden=16", "--set", "train.max_steps=40"])
        .args(["--threads", "1", "--out", out.to_str().unwrap()])
        .env("QLSTM_PROGRESS_SECS", "0")
        .output()
        .unwrap();
    ok(&o, "run");
    let err = String::from_utf8_lossy(&o.stderr);
    // the goal is the step budget, not the epoch's 784 windows
    assert!(err.contains("epoch 1/200 step 40/40, train loss") && err.contains("tok/s, eta"), "{err}");
    assert!(err.contains("evaluating valid"), "{err}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout.lines().find(|l| l.contains(" epoch 1 ")).unwrap();
    assert!(line.contains("train loss") && line.contains("nats, valid loss") && line.contains(" bpc, test "), "{line}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn dry_run_prints_what_the_run_would_be_and_writes_nothing() {
    let out = scratch("dry");
    let o = run(&out, &["train.max_steps=60"], &["--dry-run"]);
    ok(&o, "dry run");
    let text = String::from_utf8_lossy(&o.stdout);
    for want in [
        "task = \"ptb_char\"",
        "hidden = 32",
        "# size: 42 KB",
        "# memory: about",
        "# steps: 60 (784 per epoch × 200 epochs, capped by train.max_steps = 60)",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert!(std::fs::read_dir(&out).unwrap().next().is_none(), "nothing written");
    let _ = std::fs::remove_dir_all(&out);
}

/// A rejected command: non-zero exit, no panic, one line on stderr containing `want`.
fn refused(o: &Output, want: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} in {err}");
    }
}

#[test]
fn tables_and_figures_refuse_what_they_cannot_do_and_make_what_they_can() {
    let empty = scratch("table-empty");
    refused(
        &bin().args(["table", empty.to_str().unwrap(), "--layout", "table2"]).output().unwrap(),
        &["no runs found"],
    );
    let missing = empty.join("typo");
    refused(
        &bin().args(["table", missing.to_str().unwrap(), "--layout", "table2"]).output().unwrap(),
        &["not a directory"],
    );
    let runs = root().join("results/budget/table2");
    let deep = empty.join("new/folder/table2.md");
    let mut o = bin();
    o.args(["table", runs.to_str().unwrap(), "--layout", "table2", "--markdown", "--out", deep.to_str().unwrap()]);
    ok(&o.output().unwrap(), "table --out into a missing folder");
    assert!(std::fs::read_to_string(&deep).unwrap().starts_with("| dataset |"));
    let run = runs.join("ptb_char_bc_none");
    let pdf = empty.join("p.pdf");
    refused(
        &bin().args(["plot", run.to_str().unwrap(), "--out", pdf.to_str().unwrap()]).output().unwrap(),
        &[".svg or .png", "not .pdf"],
    );
    assert!(!pdf.exists());
    let svg = empty.join("p.svg");
    ok(&bin().args(["plot", run.to_str().unwrap(), "--out", svg.to_str().unwrap()]).output().unwrap(), "plot");
    let text = std::fs::read_to_string(&svg).unwrap();
    let labels: Vec<&str> = text.split("</text>").filter_map(|t| t.rsplit('>').next()).map(str::trim).collect();
    // log ticks at powers of ten, as numbers a reader expects; integer steps; no minor grid
    assert!(labels.contains(&"1000") && labels.contains(&"1e33") && labels.contains(&"700"), "{labels:?}");
    for l in &labels {
        assert!(!l.ends_with("e0") && !l.ends_with(".0") && !l.contains("e-3"), "label {l:?} in {labels:?}");
    }
    assert!(!text.contains("opacity=\"0.1\""), "no light (minor) grid lines");
    let _ = std::fs::remove_dir_all(&empty);
}

fn help(sub: &str) -> String {
    let o = bin().args([sub, "--help"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn help_describes_every_option_and_bad_values_are_named() {
    for sub in ["run", "eval", "sweep", "table", "bench", "plot", "size"] {
        let text = help(sub);
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim();
            let bare = (t.starts_with("--") || t.starts_with("-h") || t.starts_with('<') || t.starts_with("["))
                && !t.contains("  ");
            // an option or argument alone on its line must be followed by its description
            let described = lines.get(i + 1).is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            assert!(!bare || described, "qlstm {sub} --help leaves `{t}` undescribed:\n{text}");
        }
    }
    for (args, want) in [
        (vec!["run", "x.toml", "--threads", "0"], "--threads"),
        (vec!["bench", "--threads", "0"], "--threads"),
        (vec!["sweep", "x.toml", "--jobs", "0"], "--jobs"),
    ] {
        refused(&bin().args(&args).output().unwrap(), &[want, "0"]);
    }
}

#[test]
fn a_truncated_split_is_blamed_on_its_file() {
    let dir = scratch("trunc");
    let data = dir.join("ptb_char");
    std::fs::create_dir_all(&data).unwrap();
    for s in ["train", "valid"] {
        let f = format!("ptb.char.{s}.txt");
        std::fs::copy(root().join("data/ptb_char").join(&f), data.join(&f)).unwrap();
    }
    std::fs::write(data.join("ptb.char.test.txt"), "a b c\n").unwrap();
    let d = format!("data.dir={}", dir.display());
    let o = bin().args(["run", &spec(), "--set", &d, "--out", dir.join("o").to_str().unwrap()]).output().unwrap();
    refused(&o, &["ptb.char.test.txt", "may be truncated", "train.eval_batch_size = 64"]);
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim().lines().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
