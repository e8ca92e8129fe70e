//! Runs that survive: interruption and resume, divergence, evaluation from checkpoints, and
//! bad input of every kind — each driven through the binary as users drive it.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, data_set, root, scratch};

/// `qlstm run` of the ptb_char recipe with extra `--set`s.
fn run_args(out: &Path, sets: &[&str]) -> Vec<String> {
    let mut a = vec!["run".into(), root().join("configs/paper/ptb_char_fp_none.toml").display().to_string()];
    for s in [data_set().as_str()].into_iter().chain(sets.iter().copied()) {
        a.push("--set".into());
        a.push(s.into());
    }
    a.extend(["--threads".into(), "1".into(), "--out".into(), out.display().to_string()]);
    a
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let h: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            // timing columns differ between runs by nature
            h.iter()
                .zip(rec.iter())
                .filter(|(h, _)| !["tokens_per_s", "wall_s", "train_tokens_per_s", "name"].contains(&h.as_str()))
                .map(|(_, v)| v.to_string())
                .collect()
        })
        .collect()
}

fn send(pid: u32, sig: &str) {
    Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
}

/// Wait for `path` to appear (a run has reached a point), up to `secs`.
fn wait_for(path: &Path, secs: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Start `qlstm run` with `sets`, send `signals` once its first checkpoint exists, and check
/// that it stopped cleanly: exit 130, an `interrupted` summary, the hint to resume.
fn stop_at_first_checkpoint(out: &Path, sets: &[&str], dir: &Path, signals: &[&str]) {
    let child = bin().args(run_args(out, sets)).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(wait_for(&dir.join("checkpoint.safetensors"), 120), "no checkpoint appeared");
    for sig in signals {
        send(child.id(), sig);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert!(summary.contains(",interrupted,"), "{summary}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
}

const BASE: [&str; 4] = ["model.hidden=32", "train.epochs=2", "train.max_steps=1200", "train.checkpoint_every=100"];

#[test]
fn sigint_then_resume_equals_an_uninterrupted_run() {
    let out = scratch("resume");
    // Uninterrupted reference: 2 epochs (1,568 steps would be the full budget; 1,200 cap).
    let mut sets: Vec<&str> = BASE.to_vec();
    sets.push("name=straight");
    let o = bin().args(run_args(&out, &sets)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Interrupted: SIGINT once the first periodic checkpoint exists (mid-epoch 1).
    let mut sets: Vec<&str> = BASE.to_vec();
    sets.push("name=resumed");
    let dir = out.join("resumed");
    stop_at_first_checkpoint(&out, &sets, &dir, &["-INT"]);

    let mut args = run_args(&out, &sets);
    args.push("--resume".into());
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("resuming from"));
    // Bit-identical with one thread: every number but the timings.
    assert_eq!(csv_rows(&dir.join("metrics.csv")), csv_rows(&out.join("straight/metrics.csv")));
    assert_eq!(csv_rows(&dir.join("summary.csv")), csv_rows(&out.join("straight/summary.csv")));

    // diagnostics written before the interruption are kept, later ones recomputed — to the
    // same values, the power iterations' warm starts included
    for f in ["lambda.csv", "grad_norm.csv"] {
        assert_eq!(csv_rows(&dir.join(f)), csv_rows(&out.join("straight").join(f)), "{f}");
    }

    // eval from the run directory (best.safetensors) equals the reported test metric
    let o = bin().args(["eval", dir.to_str().unwrap(), "--threads", "1", "--set", &data_set()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let value: f64 = text.lines().nth(1).unwrap().split(',').nth(4).unwrap().parse().unwrap();
    let mut r = csv::Reader::from_path(dir.join("summary.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let rec = r.records().next().unwrap().unwrap();
    let reported: f64 = rec[h.iter().position(|c| c == "test_metric").unwrap()].parse().unwrap();
    assert_eq!(value, reported, "eval {value} vs reported {reported}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_second_signal_exits_at_once_without_corrupting_files() {
    let out = scratch("twice");
    let mut sets: Vec<&str> = BASE.to_vec();
    sets.extend(["name=twice", "model.hidden=256"]);
    let dir = out.join("twice");
    let mut child = bin().args(run_args(&out, &sets)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_for(&dir.join("spec.toml"), 60));
    std::thread::sleep(Duration::from_millis(300));
    send(child.id(), "-INT");
    send(child.id(), "-INT");
    let t0 = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    // whatever exists is whole: the spec parses; a checkpoint, if any, reads
    assert!(qlstm::spec::Spec::load(&dir.join("spec.toml"), &[]).is_ok());
    if dir.join("checkpoint.safetensors").exists() {
        qlstm::io::checkpoint::read(&dir.join("checkpoint.safetensors")).unwrap();
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// A sweep's stop request (SIGUSR1) next to a signal of the run's own (a scheduler's SIGTERM
/// reaches every process, the sweep's request follows): never a second signal, so the run
/// still stops after its step with a checkpoint and an `interrupted` summary.
#[test]
fn a_stop_request_beside_a_signal_still_stops_cleanly() {
    let out = scratch("request");
    let mut sets: Vec<&str> = BASE.to_vec();
    sets.extend(["name=request", "model.hidden=256", "train.checkpoint_every=5"]);
    stop_at_first_checkpoint(&out, &sets, &out.join("request"), &["-TERM", "-USR1", "-USR1"]);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_huge_learning_rate_diverges_cleanly() {
    let out = scratch("diverge");
    let o = bin()
        .args(run_args(&out, &["name=boom", "model.hidden=32", "train.lr=1e6", "train.clip=0", "train.max_steps=300"]))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = std::fs::read_to_string(out.join("boom/summary.csv")).unwrap();
    let mut r = csv::Reader::from_reader(rows.as_bytes());
    let h = r.headers().unwrap().clone();
    let rec = r.records().next().unwrap().unwrap();
    let col = |c: &str| rec[h.iter().position(|x| x == c).unwrap()].to_string();
    assert_eq!(col("status"), "diverged");
    assert!(!col("diverged_step").is_empty(), "the step is recorded");
    assert!(String::from_utf8_lossy(&o.stderr).contains("diverged at step"));
    let _ = std::fs::remove_dir_all(&out);
}

/// A plain binary GRU at the paper's H = 512 (real PTB-char text) has a finite loss in its first
/// window but a gradient that overflows f32 on the way back through it (‖∂ξ/∂h_t‖ passes 1e34
/// 18 steps before the window's start: results/budget/gru/ptb_char_gru_bc_none): the run says
/// so, rather than blaming a loss that was finite.
#[test]
fn an_overflowing_gradient_is_named_as_the_cause() {
    let out = scratch("overflow");
    let sets = ["name=gru_bc", "model.cell=gru", "model.quantizer=bc", "model.hidden=512", "train.max_steps=1"];
    let o = bin().args(run_args(&out, &sets)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("diverged at step 0 (the gradient overflowed f32"), "{err}");
    let loss: f64 = err.split("mean training loss ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(loss.is_finite() && loss < 5.0, "the loss itself was finite and near ln 50: {loss}");
    let rows = std::fs::read_to_string(out.join("gru_bc/summary.csv")).unwrap();
    assert!(rows.contains(",diverged,0,gru"), "{rows}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A rejected command: non-zero exit, one line naming the problem, no panic, nothing written.
fn rejected(o: &Output, out: &Path, expect: &str, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: accepted");
    assert!(!err.contains("panicked"), "{what}: panic: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.contains(expect), "{what}: {err:?} lacks {expect:?}");
    let leftovers: Vec<_> = std::fs::read_dir(out).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "{what}: left {leftovers:?}");
}

#[test]
fn every_bad_spec_in_the_corpus_is_rejected_clearly() {
    let corpus = root().join("tests/bad_specs");
    let mut n = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let expect = match path.file_name().unwrap().to_str().unwrap() {
            "empty.toml" => "the file is empty".to_string(),
            "non_utf8.toml" => "not UTF-8".to_string(),
            _ => text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .expect("first line: # expect: …")
                .to_string(),
        };
        let out = scratch("bad");
        let sets = if text.contains("[data]") { vec![] } else { vec!["--set".to_string(), data_set()] };
        let o =
            bin().arg("run").arg(&path).args(&sets).args(["--out", out.join("o").to_str().unwrap()]).output().unwrap();
        rejected(&o, &out.join("o"), &expect, &path.display().to_string());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(path.file_name().unwrap().to_str().unwrap())
                || expect.contains("streams")
                || expect.contains("GiB")
                || expect.contains("text8"),
            "{}: message names the file",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 25, "{n} cases");
}

#[test]
fn corrupt_checkpoints_and_unwritable_outputs_are_reported() {
    let out = scratch("corrupt");
    // A garbage checkpoint where --resume looks for one.
    let dir = out.join("garbage");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("checkpoint.safetensors"), b"this is not a checkpoint").unwrap();
    let mut args = run_args(&out, &["name=garbage", "model.hidden=32", "train.max_steps=5"]);
    args.push("--resume".into());
    let o = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("checkpoint.safetensors")
            && err.contains("not a readable safetensors file"),
        "{err}"
    );
    assert!(!err.contains("panicked"));

    // A truncated real checkpoint.
    let o = bin().args(run_args(&out, &["name=real", "model.hidden=32", "train.max_steps=5"])).output().unwrap();
    assert!(o.status.success());
    let ck = out.join("real/checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    let o = bin().args(["eval", ck.to_str().unwrap(), "--set", &data_set()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("real/checkpoint.safetensors"), "{err}");
    // A checkpoint of another spec.
    let mut args = run_args(&out, &["name=real", "model.hidden=48", "train.max_steps=5"]);
    std::fs::write(&ck, &bytes).unwrap();
    args.push("--resume".into());
    let o = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("different spec") && err.contains("hidden"), "{err}");
    assert!(err.contains("to keep that run, give this one another name"), "{err}");

    // A read-only output directory (root ignores permissions, so use a path under a file).
    let blocker = out.join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let o = bin().args(run_args(&blocker, &["name=ro", "model.hidden=32", "train.max_steps=5"])).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("file/ro") && !err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_full_disk_is_an_error_not_a_half_written_file() {
    // RLIMIT_FSIZE with SIGXFSZ ignored makes writes past 200 KB fail with EFBIG, as a full
    // disk would: the checkpoint cannot be written.
    let out = scratch("full");
    let args = run_args(&out, &["name=full", "model.hidden=256", "train.max_steps=2"]);
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!("ulimit -f 200; trap '' XFSZ; exec '{}' {}", env!("CARGO_BIN_EXE_qlstm"), quoted.join(" "));
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted");
    // one error line (progress lines may come before it: stderr is not a terminal here)
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("qlstm: error")).collect();
    assert!(!err.contains("panicked") && errors.len() == 1 && errors[0].contains("full/"), "{err}");
    // no half-written file under its real name
    for f in std::fs::read_dir(out.join("full")).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().to_string();
        if name.ends_with(".safetensors") {
            qlstm::io::checkpoint::read(&f.path()).unwrap();
        }
        assert!(!name.contains(".tmp-"), "temporary file {name} left behind");
    }
    let _ = std::fs::remove_dir_all(&out);
}
