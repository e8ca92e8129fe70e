//! The binary driven as users drive it: real runs on real data, and bad input.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;

use common::{data_set, root, scratch};

fn qlstm(args: &[&str], cwd: &Path) -> Output {
    common::bin().args(args).current_dir(cwd).output().expect("run qlstm")
}

fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| headers.iter().zip(rec.unwrap().iter()).map(|(h, v)| (h.to_string(), v.to_string())).collect())
        .collect()
}

/// Unigram entropy of PTB-char training text in bits, computed from the file.
fn unigram_bits() -> f64 {
    let c = qlstm::data::Corpus::load(qlstm::spec::Task::PtbChar, &root().join("data")).unwrap();
    c.unigram_entropy() / std::f64::consts::LN_2
}

#[test]
fn ptb_char_trains_far_below_unigram_entropy() {
    let out = scratch("e2e");
    let spec = root().join("configs/paper/ptb_char_fp_none.toml");
    let o = qlstm(
        &[
            "run",
            spec.to_str().unwrap(),
            "--set",
            "model.hidden=128",
            "--set",
            "train.max_steps=300",
            "--set",
            &data_set(),
            "--threads",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
        &out,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = out.join("ptb_char_fp_none");
    let s = &read_csv(&dir.join("summary.csv"))[0];
    let m = read_csv(&dir.join("metrics.csv"));
    assert_eq!(m.len(), 1);
    for col in [
        "epoch",
        "step",
        "lr",
        "train_loss",
        "valid_loss",
        "valid_metric",
        "test_loss",
        "test_metric",
        "tokens_per_s",
        "wall_s",
    ] {
        assert!(m[0].contains_key(col), "metrics.csv lacks {col}");
    }
    assert_eq!(s["status"], "ok");
    assert_eq!(s["steps"], "300");
    assert_eq!(s["metric"], "bpc");
    let valid: f64 = s["valid_metric"].parse().unwrap();
    let unigram = unigram_bits();
    // 300 steps of H=128 reach about 3.0 bits; the unigram model is 4.33.
    assert!(valid < unigram - 1.0, "valid {valid} bpc vs unigram {unigram} bits");
    assert!(dir.join("spec.toml").exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// A 20-step PTB-char run at H = 32 on one thread, with extra `--set`s and environment
/// variables; returns its metrics.csv rows.
fn tiny_run(out: &Path, name: &str, sets: &[&str], env: &[(&str, &str)]) -> Vec<HashMap<String, String>> {
    let spec = root().join("configs/paper/ptb_char_fp_none.toml");
    let (name_set, data, out_s) = (format!("name=\"{name}\""), data_set(), out.to_str().unwrap().to_string());
    let mut args = vec!["run", spec.to_str().unwrap(), "--set", &name_set, "--set", "model.hidden=32"];
    args.extend(["--set", "train.max_steps=20", "--set", &data, "--threads", "1", "--out", &out_s]);
    for s in sets {
        args.extend(["--set", s]);
    }
    let o = common::bin().envs(env.iter().copied()).current_dir(out).args(&args).output().expect("run qlstm");
    assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    read_csv(&out.join(format!("{name}/metrics.csv")))
}

#[test]
fn same_seed_same_numbers() {
    let out = scratch("det");
    let mut runs = Vec::new();
    for i in 0..2 {
        let mut m = tiny_run(&out, &format!("det{i}"), &[], &[]);
        for row in &mut m {
            row.remove("tokens_per_s");
            row.remove("wall_s");
        }
        runs.push(m);
    }
    assert_eq!(runs[0], runs[1]);
    let _ = std::fs::remove_dir_all(&out);
}

/// The elementwise kernels (cell, layer and batch norm, softmax, Adam) are compiled three
/// times — baseline x86-64, AVX2 + FMA, AVX-512 — and one copy is picked at run time;
/// `QLSTM_SIMD` caps the pick. Every copy must train to the same numbers up to rounding (FMA
/// contraction and lane order differ): 20 steps with layer norm and with batch norm (full
/// precision, so no sign flips amplify rounding), losses within 1e-4 relative. On a CPU
/// without AVX-512 the cap leaves AVX2, and the test compares fewer copies.
#[test]
fn every_compiled_simd_copy_trains_to_the_same_numbers() {
    let out = scratch("simd");
    for norm in ["layer", "batch_shared"] {
        let mut losses = Vec::new();
        for level in ["base", "avx2", "avx512"] {
            let set = format!("model.normalization={norm}");
            let m = tiny_run(&out, &format!("{norm}_{level}"), &[&set], &[("QLSTM_SIMD", level)]);
            let l: Vec<f64> =
                ["train_loss", "valid_loss", "test_loss"].iter().map(|k| m[0][*k].parse().unwrap()).collect();
            losses.push((level, l));
        }
        let (_, reference) = &losses[0];
        for (level, l) in &losses[1..] {
            for (a, b) in l.iter().zip(reference) {
                assert!((a - b).abs() <= 1e-4 * b.abs(), "{norm}: {level} gives {l:?}, base {reference:?}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Every bad input: non-zero exit, a one-line message naming the problem, no panic, and no
/// result files.
fn assert_rejected(name: &str, spec_text: Option<&str>, sets: &[&str], expect: &[&str]) {
    let dir = scratch(name);
    let spec = dir.join("spec.toml");
    if let Some(t) = spec_text {
        std::fs::write(&spec, t).unwrap();
    }
    let out = dir.join("out");
    let mut args = vec!["run".to_string(), spec.to_str().unwrap().into(), "--out".into(), out.to_str().unwrap().into()];
    for s in sets {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = qlstm(&args, &dir);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{name}: accepted");
    assert!(!err.contains("panicked"), "{name}: panic: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{name}: not one line: {err}");
    for e in expect {
        assert!(err.contains(e), "{name}: message lacks {e:?}: {err}");
    }
    assert!(!out.exists(), "{name}: left output behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_specs_are_rejected_clearly() {
    assert_rejected(
        "unknown-key",
        Some("task = \"ptb_char\"\n[model]\nhiden = 5\n"),
        &[],
        &["spec.toml", "unknown key `model.hiden`", "hidden"],
    );
    assert_rejected(
        "wrong-type",
        Some("task = \"ptb_char\"\n[train]\nlr = \"fast\"\n"),
        &[],
        &["`train.lr` must be a float"],
    );
    assert_rejected("zero-hidden", Some("task = \"ptb_char\"\n[model]\nhidden = 0\n"), &[], &["`model.hidden` = 0"]);
    assert_rejected("unknown-task", Some("task = \"imagenet\"\n"), &[], &["task = \"imagenet\"", "allowed: ptb_char"]);
    assert_rejected("missing-spec", None, &[], &["spec.toml", "No such file"]);
    assert_rejected(
        "bad-set",
        Some("task = \"ptb_char\"\n"),
        &["model.quantizer=xnor"],
        &["`model.quantizer` = \"xnor\"", "allowed: fp, bc"],
    );
}

/// bf16 products (`train.gemm_precision`): a value that is not one is rejected as any enum is;
/// on a machine without a bf16 unit (here made so with QLSTM_SIMD=avx2) the run refuses before
/// writing anything, naming the file, the field and what this machine allows.
#[test]
fn bf16_is_refused_where_amx_is_missing() {
    assert_rejected(
        "bad-precision",
        Some("task = \"ptb_char\"\n"),
        &["train.gemm_precision=bf8"],
        &["`train.gemm_precision` = \"bf8\"", "allowed: f32, bf16"],
    );
    let dir = scratch("no-amx");
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, "task = \"ptb_char\"\n[train]\ngemm_precision = \"bf16\"\n").unwrap();
    let out = dir.join("out");
    let o = common::bin()
        .env("QLSTM_SIMD", "avx2")
        .current_dir(&dir)
        .args(["run", spec.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    for e in ["spec.toml", "`train.gemm_precision` = \"bf16\"", "AMX-BF16", "allowed on this machine: \"f32\""] {
        assert!(err.contains(e), "message lacks {e:?}: {err}");
    }
    assert!(!out.exists(), "left output behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where the CPU has a bf16 unit (AMX-BF16, or AVX512-BF16 on AMD), a bf16 run trains to nearly
/// the f32 run's numbers: 20 steps of PTB-char (H = 32, so every per-step product runs on a
/// tile tail), each loss within 1 % of f32's. The bf16 rounding of h and W_h perturbs each
/// product by ~0.4 % of its terms' scale, no more; a kernel that read the wrong tile rows or
/// lanes would be far off.
#[test]
fn bf16_products_train_close_to_f32() {
    if let Err(why) = qlstm::tensor::bf16_products() {
        eprintln!("bf16 run not possible on this machine: {why}");
        return;
    }
    let out = scratch("bf16");
    let f = tiny_run(&out, "f32", &[], &[]);
    let b = tiny_run(&out, "bf16", &["train.gemm_precision=\"bf16\""], &[]);
    for k in ["train_loss", "valid_loss", "test_loss"] {
        let (x, y): (f64, f64) = (f[0][k].parse().unwrap(), b[0][k].parse().unwrap());
        assert!((x - y).abs() <= 0.01 * x.abs(), "{k}: f32 {x}, bf16 {y}");
        assert!(x != y, "{k}: bf16 gave f32's number exactly ({x}): were the bf16 products used?");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn missing_and_corrupt_data_are_rejected_clearly() {
    let empty = scratch("nodata");
    let d = format!("data.dir={}", empty.display());
    assert_rejected(
        "missing-ptb",
        Some("task = \"ptb_char\"\n"),
        &[&d],
        &["ptb.char.train.txt", "scripts/get_data.sh ptb"],
    );
    // A truncated IDX file: the real train images cut short.
    let mnist = empty.join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    for f in ["train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::copy(root().join("data/mnist").join(f), mnist.join(f)).unwrap();
    }
    let full = std::fs::read(root().join("data/mnist/train-images-idx3-ubyte")).unwrap();
    std::fs::write(mnist.join("train-images-idx3-ubyte"), &full[..full.len() / 3]).unwrap();
    assert_rejected("truncated-idx", Some("task = \"seq_mnist\"\n"), &[&d], &["train-images-idx3-ubyte", "truncated"]);
    // Wrong magic number.
    let mut bad = full.clone();
    bad[3] = 0x01;
    std::fs::write(mnist.join("train-images-idx3-ubyte"), &bad).unwrap();
    assert_rejected("bad-magic", Some("task = \"seq_mnist\"\n"), &[&d], &["magic number"]);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn size_works_without_data() {
    let dir = scratch("size");
    let o = qlstm(
        &[
            "size",
            root().join("configs/paper/ptb_char_fp_none.toml").to_str().unwrap(),
            "--set",
            "data.dir=nowhere",
            "--csv",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("layer,part,count,bits,bytes,kb,size_kb\n0,w_x,102400,32,409600,400.000,\n"), "{text}");
    assert!(text.trim_end().ends_with(",total,,,4612096,4504.000,4504"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
