//! The paper's explanation, measured: λ1 at initialisation and the gradient norms within a
//! window, on real PTB-char text at H = 128.

mod common;

use std::path::Path;

use common::{data_set, root};

use qlstm::spec::Spec;
use qlstm::train::Trainer;

fn trainer(q: &str, n: &str, steps: usize) -> Trainer {
    trainer_with(q, n, steps, &[])
}

fn trainer_with(q: &str, n: &str, steps: usize, extra: &[&str]) -> Trainer {
    let mut sets = vec![
        data_set(),
        format!("model.quantizer={q}"),
        format!("model.normalization={n}"),
        "model.hidden=128".into(),
        format!("train.max_steps={steps}"),
        "diagnostics.lambda_every=10".into(),
        "diagnostics.grad_every=10".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    Trainer::new(Spec::load(&root().join("configs/paper/ptb_char_fp_none.toml"), &sets).unwrap()).unwrap()
}

/// λ1 at step 0 and the growth of ‖∂ξ/∂h_t‖ from the last step of the window back to the
/// first, at the last recorded step.
fn measure(q: &str, n: &str, steps: usize) -> (f64, f64) {
    qlstm::tensor::set_threads(2);
    let mut t = trainer(q, n, steps);
    t.train_epoch(1).unwrap();
    let lambda0 = t.lambda_rows().iter().find(|r| r.step == 0).unwrap().lambda1;
    let last = t.grad_rows().iter().map(|r| r.step).max().unwrap();
    let trace: Vec<f64> =
        t.grad_rows().iter().filter(|r| r.step == last && r.layer == 0).map(|r| r.grad_norm).collect();
    (lambda0, trace[0] / trace[trace.len() - 1])
}

#[test]
fn quantization_inflates_lambda1_and_weight_norm_removes_it() {
    let (fp, fp_growth) = measure("fp", "none", 30);
    let (bc, bc_growth) = measure("bc", "none", 30);
    let (bcw, bcw_growth) = measure("bc", "weight", 30);
    eprintln!("λ1 at step 0: fp {fp:.3}, bc {bc:.3}, bc/weight {bcw:.3}");
    eprintln!("‖∂ξ/∂h_0‖/‖∂ξ/∂h_T‖ after 30 steps: fp {fp_growth:.3e}, bc {bc_growth:.3e}, bc/weight {bcw_growth:.3e}");
    assert!(bc >= 5.0 * fp, "bc/none λ1 {bc} vs fp {fp}");
    assert!(bcw <= 2.0 * fp && bcw >= 0.5 * fp, "bc/weight λ1 {bcw} vs fp {fp}");
    assert!(bc_growth > 1e6 * bcw_growth.max(1.0), "bc grows {bc_growth:e}, bc/weight {bcw_growth:e}");
}

fn header(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().lines().next().unwrap().to_string()
}

#[test]
fn csv_columns_and_the_plot_command() {
    let out = std::env::temp_dir().join(format!("qlstm-diag-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let bin = env!("CARGO_BIN_EXE_qlstm");
    for (q, n) in [("bc", "none"), ("bc", "layer")] {
        let spec = root().join(format!("configs/paper/ptb_char_{q}_{n}.toml"));
        let d = data_set();
        let o = std::process::Command::new(bin)
            .args([
                "run",
                spec.to_str().unwrap(),
                "--set",
                "model.hidden=32",
                "--set",
                "train.max_steps=12",
                "--set",
                &d,
            ])
            .args(["--set", "diagnostics.lambda_every=5", "--set", "diagnostics.grad_every=5"])
            .args(["--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let run = out.join("ptb_char_bc_layer");
    assert_eq!(
        header(&run.join("lambda.csv")),
        "step,epoch,layer,lambda1,lambda2,gamma1,norm_i,g_i,sigma_i,norm_f,g_f,sigma_f,norm_a,g_a,sigma_a,norm_o,g_o,sigma_o,\
         cell,zeta,gamma_z,gamma_u,norm_r,g_r,sigma_r,norm_z,g_z,sigma_z,norm_n,g_n,sigma_n"
    );
    assert_eq!(header(&run.join("grad_norm.csv")), "step,epoch,layer,t,grad_norm");
    let lambda = std::fs::read_to_string(run.join("lambda.csv")).unwrap();
    assert_eq!(lambda.lines().count(), 1 + 3, "steps 0, 5, 10");
    // plain cell: no gains or divisors, so those columns are empty
    let plain = std::fs::read_to_string(out.join("ptb_char_bc_none/lambda.csv")).unwrap();
    assert!(plain.lines().nth(1).unwrap().contains(",,"));
    let svg = out.join("fig.svg");
    let o = std::process::Command::new(bin)
        .args([
            "plot",
            out.join("ptb_char_bc_none").to_str().unwrap(),
            run.to_str().unwrap(),
            "--out",
            svg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("<polyline") && text.contains("ptb_char_bc_layer"));
    assert!(!text.contains("(step 0)"), "by default the gradient panel shows the last recorded step");
    // --grad-step picks the recorded trace nearest the step asked for: 1 → the initial model's
    let o = std::process::Command::new(bin)
        .args(["plot", run.to_str().unwrap(), "--grad-step", "1", "--out", svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(&svg).unwrap().contains("ptb_char_bc_layer (step 0)"));
    let _ = std::fs::remove_dir_all(&out);
}

/// The GRU (docs/SPEC.md §6) at step 0 on PTB-char H = 256: binarization inflates λ1 and the
/// gradient trace as for the LSTM, weight norm takes it back.
#[test]
fn gru_quantization_inflates_lambda1_and_weight_norm_removes_it() {
    qlstm::tensor::set_threads(2);
    let at_step0 = |q: &str, n: &str| {
        let mut t = trainer_with(q, n, 1, &["model.cell=gru", "model.hidden=256"]);
        t.train_epoch(1).unwrap();
        let row = t.lambda_rows().iter().find(|r| r.step == 0).unwrap().clone();
        assert_eq!(row.cell.name(), "gru");
        assert!(
            row.zeta.is_some_and(|z| z > 0.0 && z <= 1.0) && row.norm_n.is_some() && row.lambda2.is_none(),
            "{row:?}"
        );
        let trace: Vec<f64> =
            t.grad_rows().iter().filter(|r| r.step == 0 && r.layer == 0).map(|r| r.grad_norm).collect();
        (row.lambda1, trace[0] / trace[trace.len() - 1])
    };
    let (fp, fp_ratio) = at_step0("fp", "none");
    let (bc, bc_ratio) = at_step0("bc", "none");
    let (bcw, _) = at_step0("bc", "weight");
    eprintln!(
        "GRU λ1 at step 0: fp {fp:.3}, bc {bc:.3}, bc/weight {bcw:.3}; ‖∂ξ/∂h_0‖/‖∂ξ/∂h_99‖: fp {fp_ratio:.3e}, bc {bc_ratio:.3e}"
    );
    assert!(bc >= 5.0 * fp, "bc/none λ1 {bc} vs fp {fp}");
    assert!(bcw <= 2.0 * fp && bcw >= 0.5 * fp, "bc/weight λ1 {bcw} vs fp {fp}");
    assert!(bc_ratio > 1e3 * fp_ratio.max(1.0), "bc trace ratio {bc_ratio:e} vs fp {fp_ratio:e}");
}

/// `qlstm plot --curves` on committed budget runs: a line per run, labelled with the paper's
/// number for its cell where the paper published one; runs of two metrics are refused.
#[test]
fn learning_curves_beside_the_papers_numbers() {
    let bin = env!("CARGO_BIN_EXE_qlstm");
    let budget = root().join("results/budget");
    let svg = std::env::temp_dir().join(format!("qlstm-curves-{}.svg", std::process::id()));
    let run = |args: &[&std::path::Path]| {
        std::process::Command::new(bin).arg("plot").arg("--curves").args(args).arg("--out").arg(&svg).output().unwrap()
    };
    let o = run(&[
        &budget.join("table2/ptb_char_fp_none"),
        &budget.join("table2/ptb_char_bc_none"),
        &budget.join("gru/ptb_char_gru_fp_none"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("ptb_char_fp_none (paper 1.45)"), "Table 2's published BPC for the cell");
    assert!(text.contains("ptb_char_bc_none (paper 2.51)"));
    assert!(text.contains("ptb_char_gru_fp_none (no published number)"), "the paper has no GRU");
    let o = run(&[&budget.join("table2/ptb_char_fp_none"), &budget.join("table4/seq_mnist_fp_layer")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("measures bpc") && err.contains("measures error_pct"), "{err}");
    let _ = std::fs::remove_file(&svg);
}
