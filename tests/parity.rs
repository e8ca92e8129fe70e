//! Parity with an independent implementation: the fixtures in tests/fixtures/parity/ were made
//! by scripts/make_parity_fixture.py with scripts/qlstm_torch.py (plain PyTorch, float64, every
//! definition written from docs/SPEC.md). For every LSTM and GRU quantizer × normalization,
//! two layers with carried state, the word model with its dropout masks and SGD, and sequential
//! MNIST, qlstm's f32 engine runs the same training step and must match: logits and loss to
//! 1e-5, gradients and the updated weights to 1e-4, relative to each tensor's largest entry
//! (an entry near zero has no relative error worth the name), batch-norm running statistics
//! to 1e-5. Finite-difference checks cannot catch a wrong definition checked consistently (a
//! gate order, an eps, a running-statistics update); this can.

use std::path::Path;

use ndarray::{Array2, ArrayView2};
use qlstm::io::checkpoint;
use qlstm::model::{DropoutMasks, Input, Model, State};
use qlstm::spec::Spec;
use qlstm::tensor::Moments;
use qlstm::train::Optimizer;
use qlstm::train::schedule::LearningRates;
use qlstm::train::step::update;
use rand::SeedableRng;

fn take(map: &mut std::collections::HashMap<String, Array2<f32>>, n: &str) -> Array2<f32> {
    map.remove(n).unwrap_or_else(|| panic!("the fixture lacks {n}"))
}

/// max |a − b| / max(max |b|, floor)
fn rel_floor(a: ArrayView2<f32>, b: ArrayView2<f32>, floor: f64) -> f64 {
    assert_eq!(a.dim(), b.dim());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(floor).max(1e-30);
    a.iter().zip(b.iter()).fold(0.0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs())) / scale
}

fn rel(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f64 {
    rel_floor(a, b, 0.0)
}

fn check(path: &Path) -> Vec<String> {
    let name = path.file_stem().unwrap().to_string_lossy().to_string();
    let mut f = checkpoint::read_with(path, &["qlstm-parity-1"], "a parity fixture").unwrap();
    let spec = Spec::from_toml_str(f.meta("spec").unwrap(), &f.path, None, &[]).unwrap();
    let vocab = f.tensors["decoder.weight"].nrows();
    let mut model = Model::<f32>::new(&spec.model_config(vocab), &mut rand_pcg::Pcg64Mcg::seed_from_u64(0));
    for (n, slot) in model.named_tensors_mut() {
        let v = take(&mut f.tensors, &n);
        assert_eq!(v.dim(), slot.dim(), "{name}: {n}");
        slot.assign(&v);
    }
    for p in model.params_mut() {
        if let (Some(m), Some(v)) =
            (f.tensors.remove(&format!("optimizer.m.{}", p.name)), f.tensors.remove(&format!("optimizer.v.{}", p.name)))
        {
            p.moments = Some(Moments { m, v });
        }
    }
    let mut opt = Optimizer::new(spec.train.optimizer);
    opt.t = f.meta("optimizer_t").unwrap().parse().unwrap();
    let batch = spec.train.batch_size;
    let targets: Vec<u32> = take(&mut f.tensors, "targets").iter().map(|&v| v as u32).collect();
    let (tokens, pixels): (Vec<u32>, Option<Array2<f32>>) = match f.tensors.remove("input.tokens") {
        Some(x) => (x.iter().map(|&v| v as u32).collect(), None),
        None => (Vec::new(), Some(take(&mut f.tensors, "input.pixels"))),
    };
    let state = if pixels.is_some() {
        model.initial_state(batch)
    } else {
        let mut st: State<f32> = model.zero_state(batch);
        for l in 0..st.h.len() {
            st.h[l] = take(&mut f.tensors, &format!("state.h.{l}"));
            if st.c[l].ncols() > 0 {
                st.c[l] = take(&mut f.tensors, &format!("state.c.{l}"));
            }
        }
        st
    };
    model.fixed_masks = Some(DropoutMasks {
        input: f.tensors.remove("mask.input"),
        between: (0..spec.model.layers).filter_map(|l| f.tensors.remove(&format!("mask.between.{l}"))).collect(),
        output: f.tensors.remove("mask.output"),
    });
    model.keep_logits = true;
    let input = match &pixels {
        Some(p) => Input::Pixels(p.view()),
        None => Input::Tokens(&tokens),
    };
    model.zero_grad();
    let stats = model.forward(input, &targets, &state, true, &mut rand_pcg::Pcg64Mcg::seed_from_u64(0));
    let mut bad = Vec::new();
    let mut expect = |what: String, err: f64, tol: f64| {
        if err.is_nan() || err > tol {
            bad.push(format!("{name}: {what} differs by {err:.2e} (tolerance {tol:.0e})"));
        }
    };
    expect("logits".into(), rel(model.kept_logits(), take(&mut f.tensors, "expect.logits").view()), 1e-5);
    let want_loss = take(&mut f.tensors, "expect.loss")[[0, 0]] as f64;
    expect("loss".into(), (stats.mean_loss() - want_loss).abs() / want_loss.abs(), 1e-5);
    let running: Vec<(String, Array2<f32>)> = model
        .named_tensors_mut()
        .into_iter()
        .filter(|(n, _)| n.contains("running_"))
        .map(|(n, a)| (n, a.clone()))
        .collect();
    for (n, a) in running {
        expect(n.clone(), rel(a.view(), take(&mut f.tensors, &format!("expect.{n}")).view()), 1e-5);
    }
    model.backward(input);
    let grads: Vec<(String, Array2<f32>)> =
        model.params_mut().iter().map(|p| (p.name.clone(), p.grad.clone())).collect();
    let want: Vec<Array2<f32>> = grads.iter().map(|(n, _)| take(&mut f.tensors, &format!("expect.grad.{n}"))).collect();
    // A gradient that is zero in exact arithmetic (a batch-normalized product removes a shift
    // every row of the batch shares) is f32 rounding in qlstm: such entries are measured
    // against 1e-3 of the largest gradient of the step.
    let floor = 1e-3 * want.iter().flat_map(|w| w.iter()).fold(0.0f64, |m, v| m.max(v.abs() as f64));
    for ((n, g), w) in grads.iter().zip(&want) {
        expect(format!("∂L/∂{n}"), rel_floor(g.view(), w.view(), floor), 1e-4);
    }
    assert!(update(&mut model, &mut opt, spec.train.clip, LearningRates::initial(&spec.train)));
    let values: Vec<(String, Array2<f32>)> =
        model.params_mut().iter().map(|p| (p.name.clone(), p.value.clone())).collect();
    for (n, v) in values {
        expect(
            format!("updated {n}"),
            rel(v.view(), take(&mut f.tensors, &format!("expect.updated.{n}")).view()),
            1e-4,
        );
    }
    bad
}

#[test]
fn qlstm_matches_the_pytorch_reference_on_every_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    let bad: Vec<String> = files.iter().flat_map(|f| check(f)).collect();
    let names: Vec<String> = files.iter().map(|f| f.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    for cell in ["lstm", "gru"] {
        let variants =
            names.iter().filter(|n| n.starts_with(&format!("{cell}_")) && n.matches('_').count() >= 2).count();
        assert!(variants >= 35 + 6, "{cell}: {variants} fixtures");
    }
    assert!(bad.is_empty(), "{} mismatches:\n{}", bad.len(), bad.join("\n"));
}
