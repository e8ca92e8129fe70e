//! Packed 1- and 2-bit models through the binary: `qlstm export` of a trained run, `qlstm eval
//! --packed` through the bit kernels equal to the checkpoint's evaluation, and `qlstm sample`
//! deterministic for a seed.

mod common;

use std::path::Path;
use std::process::Output;

use common::{bin, data_set, root, scratch};

fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The validation loss `qlstm eval` prints (its last column).
fn loss(text: &str) -> f64 {
    text.lines().nth(1).unwrap().rsplit(',').next().unwrap().parse().unwrap()
}

fn train(out: &Path, spec: &str, name: &str, sets: &[String]) {
    let mut c = bin();
    c.args(["run", &root().join(spec).display().to_string(), "--set", &data_set(), "--set", &format!("name={name}")]);
    for s in sets {
        c.args(["--set", s]);
    }
    ok(&c.args(["--threads", "1", "--out", out.to_str().unwrap()]).output().unwrap(), name);
}

/// Train, export, evaluate both ways; returns the export's report.
fn round_trip(out: &Path, spec: &str, name: &str, sets: &[String]) -> String {
    train(out, spec, name, sets);
    let dir = out.join(name);
    let report = ok(&bin().args(["export", dir.to_str().unwrap()]).output().unwrap(), "export");
    let ck = ok(
        &bin().args(["eval", dir.to_str().unwrap(), "--split", "valid", "--threads", "1"]).output().unwrap(),
        "eval",
    );
    let file = dir.join("packed.safetensors");
    let packed = ok(
        &bin()
            .args(["eval", "--packed", file.to_str().unwrap(), "--split", "valid", "--threads", "1"])
            .output()
            .unwrap(),
        "eval --packed",
    );
    let (a, b) = (loss(&ck), loss(&packed));
    assert!(
        (a - b).abs() <= 1e-6 * a.abs(),
        "{name}: packed {b} vs checkpoint {a} ({:.2e} relative)",
        (a - b).abs() / a
    );
    report
}

#[test]
fn every_quantizer_and_normalization_evaluates_the_same_packed() {
    let out = scratch("packed35");
    let tiny = ["model.hidden=16", "train.max_steps=20", "train.eval_batch_size=256"].map(String::from);
    for q in ["fp", "bc", "bwn", "lab", "tc", "twn", "lat"] {
        for n in ["none", "weight", "layer", "batch_shared", "batch_separate"] {
            let mut sets = tiny.to_vec();
            sets.extend([format!("model.quantizer={q}"), format!("model.normalization={n}")]);
            round_trip(&out, "configs/paper/ptb_char_fp_none.toml", &format!("{q}_{n}"), &sets);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_gru_the_word_model_and_sequential_mnist_pack_too() {
    let out = scratch("packed-other");
    let tiny = |extra: &[&str]| -> Vec<String> {
        ["model.hidden=16", "train.max_steps=10"].iter().chain(extra).map(|s| s.to_string()).collect()
    };
    for (q, n) in [("bc", "weight"), ("tc", "batch_separate"), ("lat", "layer")] {
        let sets = tiny(&[
            "model.cell=gru",
            "train.eval_batch_size=256",
            &format!("model.quantizer={q}"),
            &format!("model.normalization={n}"),
        ]);
        round_trip(&out, "configs/paper/ptb_char_fp_none.toml", &format!("gru_{q}_{n}"), &sets);
    }
    let word = tiny(&["model.embedding=16", "model.quantizer=bwn", "model.normalization=layer"]);
    round_trip(&out, "configs/paper/ptb_word_fp_none.toml", "word", &word);
    // W_x stays full precision (a dense f32 matrix in the file), W_h binary
    let mnist =
        tiny(&["model.quantizer=bc", "model.normalization=weight", "train.max_steps=3", "train.eval_batch_size=1000"]);
    let report = round_trip(&out, "configs/paper/seq_mnist_fp_none.toml", "mnist", &mnist);
    assert!(report.contains("recurrent weights"), "{report}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_export_reports_its_bytes_and_sampling_is_deterministic() {
    let out = scratch("packed-sample");
    let sets =
        ["model.hidden=32", "train.max_steps=30", "model.quantizer=bc", "model.normalization=weight"].map(String::from);
    let report = round_trip(&out, "configs/paper/ptb_char_fp_none.toml", "bc", &sets);
    // bc/weight at H = 32 on 50 symbols: 4·32 rows of 7 + 4 bytes of bits, the biases, the row
    // scales (weight norm's gains, counted by the size rule as 8H floats)
    let bits = 128 * 7 + 128 * 4;
    let line = report.lines().find(|l| l.trim_start().starts_with("recurrent weights")).unwrap();
    assert_eq!(line.split_whitespace().nth(2), Some(bits.to_string().as_str()), "{report}");
    assert!(report.contains("by docs/SPEC.md §4"), "{report}");
    let file = out.join("bc/packed.safetensors");
    let sample = |seed: &str, packed: bool| {
        let mut c = bin();
        c.arg("sample");
        if packed {
            c.args(["--packed", file.to_str().unwrap()]);
        } else {
            c.arg(out.join("bc"));
        }
        ok(&c.args(["--len", "80", "--seed", seed, "--prime", "the "]).output().unwrap(), "sample")
    };
    let a = sample("7", true);
    assert_eq!(a, sample("7", true), "same seed, same text");
    assert_ne!(a, sample("8", true), "another seed, another text");
    assert!(a.starts_with("the ") && a.chars().count() >= 80, "{a:?}");
    // the checkpoint and the packed file give the same text (their logits agree to ~1e-7)
    assert_eq!(a, sample("7", false));
    let _ = std::fs::remove_dir_all(&out);
}

/// `qlstm bench --inference`: a row per (weights, batch) with the f32 row first, speed-ups
/// against it, the bytes a step reads as packed (1 bit per weight plus the row scales), and a
/// clear refusal of a quantizer that has no packed form here.
#[test]
fn the_inference_bench_sets_packed_beside_f32() {
    let o = bin()
        .args(["bench", "--inference", "--config", "char", "--quantizer", "fp,bc", "--threads", "1", "--steps", "1"])
        .output()
        .unwrap();
    let text = ok(&o, "bench --inference");
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let head = r.headers().unwrap().clone();
    let col = |name: &str| head.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}: {head:?}"));
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    let got: Vec<(String, String)> =
        rows.iter().map(|x| (x[col("weights")].to_string(), x[col("batch")].to_string())).collect();
    let want: Vec<(String, String)> = [("f32", "1"), ("packed", "1"), ("f32", "64"), ("packed", "64")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    for x in &rows {
        let tok: f64 = x[col("tokens_per_s")].parse().unwrap();
        assert!(tok > 0.0 && tok.is_finite(), "{x:?}");
    }
    assert_eq!(&rows[0][col("speedup_vs_f32")], "1.00");
    // char H = 512: W_x (2048 × 50, one column read per token) and W_h (2048 × 512)
    let f32_bytes: usize = rows[0][col("lstm_weight_bytes")].parse().unwrap();
    assert_eq!(f32_bytes, 2048 * 4 + 2048 * 512 * 4);
    // packed: W_h's sign plane (64 bytes per row) and f32 row scales, and the one-hot W_x's
    // share of its plane (rows padded to 7 bytes) and scales: one column of 50
    let packed: usize = rows[1][col("lstm_weight_bytes")].parse().unwrap();
    assert_eq!(packed, 2048 * 64 + 2048 * 4 + (2048 * 7 + 2048 * 4usize).div_ceil(50));
    let bad = bin()
        .args(["bench", "--inference", "--config", "char", "--quantizer", "lab", "--steps", "1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("allowed: fp (the f32 model), bc, tc"), "{bad:?}");
}
