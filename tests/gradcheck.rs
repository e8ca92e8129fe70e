//! Finite-difference gradient checks of every forward/backward pair, in f64.
//!
//! Tolerance: central differences with step 1e-6 in f64 have truncation error
//! O(h²·f''') ≈ 1e-12 and round-off ≈ 1e-16·|L|/h ≈ 1e-10 for losses of order 1, so an
//! analytic gradient that is right agrees to |a − n| ≤ 1e-6·max(|a|, |n|) + 1e-8; a wrong term
//! (a missing factor, a sign, an off-by-one in time) shows up as errors of order |a| itself.

use ndarray::Array2;
use qlstm::model::{Input, Model, State};
use qlstm::spec::{CellKind, Normalization, Quantizer, Spec, Task};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

const H_STEP: f64 = 1e-6;

fn tolerance(a: f64, n: f64) -> f64 {
    1e-6 * a.abs().max(n.abs()) + 1e-8
}

struct Case {
    model: Model<f64>,
    /// Sequential MNIST: pixels in, learned initial state, one prediction per sequence.
    mnist: bool,
    tokens: Vec<u32>,
    pixels: Array2<f64>,
    targets: Vec<u32>,
    state: State<f64>,
    seed: u64,
}

impl Case {
    fn input(&self) -> Input<'_, f64> {
        if self.mnist { Input::Pixels(self.pixels.view()) } else { Input::Tokens(&self.tokens) }
    }

    /// Mean loss with the dropout masks fixed (the same rng every time).
    fn loss(&mut self) -> f64 {
        let mut rng = Pcg64Mcg::seed_from_u64(self.seed);
        if self.mnist {
            // the learned h0/c0 are parameters: rebuild the state from them every time
            self.state = self.model.initial_state(self.state.h[0].nrows());
        }
        let input = if self.mnist { Input::Pixels(self.pixels.view()) } else { Input::Tokens(&self.tokens) };
        self.model.forward(input, &self.targets, &self.state, true, &mut rng).mean_loss()
    }

    fn analytic(&mut self) {
        self.model.zero_grad();
        self.loss();
        let input = if self.mnist { Input::Pixels(self.pixels.view()) } else { Input::Tokens(&self.tokens) };
        self.model.backward(input);
        let _ = self.input();
    }
}

/// A model and a window to check; the arguments are the knobs the cases vary. Dense inputs at
/// most 8 wide (most cases' embeddings and hidden layers) have N_x's x̂ recomputed in backward;
/// wider ones keep it for the window.
#[allow(clippy::too_many_arguments)]
fn build(
    cell: CellKind,
    task: Task,
    vocab: usize,
    hidden: usize,
    embedding: usize,
    layers: usize,
    steps: usize,
    batch: usize,
    dropout: f64,
    q: Quantizer,
    norm: Normalization,
) -> Case {
    let mut spec = Spec::defaults(task);
    spec.model.cell = cell;
    spec.model.hidden = hidden;
    spec.model.layers = layers;
    spec.model.quantizer = q;
    spec.model.normalization = norm;
    if task.uses_embedding() {
        spec.model.embedding = embedding;
        spec.model.dropout_input = dropout;
    }
    spec.model.dropout_between = dropout;
    spec.model.dropout_output = dropout;
    let mut rng = Pcg64Mcg::seed_from_u64(7);
    let mut model = Model::<f64>::new(&spec.model_config(vocab), &mut rng);
    // Scale weights up a little so gates leave the linear regime and every term matters.
    for p in model.params_mut() {
        for x in p.value.iter_mut() {
            *x += rng.random_range(-0.3..0.3);
        }
    }
    let n = steps * batch;
    let tokens: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab.max(1) as u32)).collect();
    let pixels = Array2::from_shape_fn((n, 1), |_| rng.random_range(0.0..1.0));
    let outputs = if task.is_mnist() { 10 } else { vocab as u32 };
    let n_targets = if task.is_mnist() { batch } else { n };
    let targets: Vec<u32> = (0..n_targets).map(|_| rng.random_range(0..outputs)).collect();
    // A carried, non-zero incoming state (MNIST starts from its learned h0/c0 instead).
    let mut state = if task.is_mnist() { model.initial_state(batch) } else { model.zero_state(batch) };
    if !task.is_mnist() {
        for a in state.h.iter_mut().chain(state.c.iter_mut()) {
            a.mapv_inplace(|_| rng.random_range(-0.8..0.8));
        }
    }
    Case { model, mnist: task.is_mnist(), tokens, pixels, targets, state, seed: 99 }
}

fn entry(s: &mut State<f64>, which: usize, l: usize) -> &mut Array2<f64> {
    if which == 0 { &mut s.h[l] } else { &mut s.c[l] }
}

/// Compare every parameter entry and every entry of the incoming state; return the worst
/// (error / tolerance) with its location. Fails the test above 1.
fn check(case: &mut Case, what: &str) {
    case.analytic();
    let grads: Vec<(String, Array2<f64>)> =
        case.model.params_mut().iter().map(|p| (p.name.clone(), p.grad.clone())).collect();
    let state_grad = case.model.state_grad();
    let mut worst = (0.0, String::new());
    let mut record = |a: f64, n: f64, at: String| {
        let r = (a - n).abs() / tolerance(a, n);
        if r > worst.0 {
            worst = (r, format!("{at}: analytic {a:.10e} numeric {n:.10e}"));
        }
    };
    for (pi, (name, grad)) in grads.iter().enumerate() {
        for idx in 0..grad.len() {
            let (r, c) = (idx / grad.ncols(), idx % grad.ncols());
            let orig = case.model.params_mut()[pi].value[[r, c]];
            case.model.params_mut()[pi].value[[r, c]] = orig + H_STEP;
            let lp = case.loss();
            case.model.params_mut()[pi].value[[r, c]] = orig - H_STEP;
            let lm = case.loss();
            case.model.params_mut()[pi].value[[r, c]] = orig;
            record(grad[[r, c]], (lp - lm) / (2.0 * H_STEP), format!("{name}[{r},{c}]"));
        }
    }
    if !case.mnist {
        for l in 0..case.state.h.len() {
            for which in 0..2 {
                let g = if which == 0 { &state_grad.h[l] } else { &state_grad.c[l] };
                for idx in 0..g.len() {
                    let (r, c) = (idx / g.ncols(), idx % g.ncols());
                    let orig = entry(&mut case.state, which, l)[[r, c]];
                    entry(&mut case.state, which, l)[[r, c]] = orig + H_STEP;
                    let lp = case.loss();
                    entry(&mut case.state, which, l)[[r, c]] = orig - H_STEP;
                    let lm = case.loss();
                    entry(&mut case.state, which, l)[[r, c]] = orig;
                    record(g[[r, c]], (lp - lm) / (2.0 * H_STEP), format!("state.{}[{l}][{r},{c}]", ["h", "c"][which]));
                }
            }
        }
    }
    assert!(worst.0 <= 1.0, "{what}: worst gradient mismatch {:.2}× tolerance at {}", worst.0, worst.1);
    eprintln!("{what}: worst {:.3}× tolerance ({})", worst.0, worst.1);
}

#[test]
fn char_lm_single_layer_carried_state() {
    let mut c = build(CellKind::Lstm, Task::PtbChar, 7, 5, 3, 1, 4, 3, 0.0, Quantizer::Fp, Normalization::None);
    check(&mut c, "char 1 layer");
}

#[test]
fn char_lm_stacked_with_dropout_between_and_output() {
    let mut c = build(CellKind::Lstm, Task::PtbChar, 6, 4, 3, 3, 3, 2, 0.4, Quantizer::Fp, Normalization::None);
    check(&mut c, "char 3 layers dropout");
}

#[test]
fn word_lm_embedding_two_layers_all_dropouts() {
    let mut c = build(CellKind::Lstm, Task::PtbWord, 9, 4, 3, 2, 3, 2, 0.3, Quantizer::Fp, Normalization::None);
    check(&mut c, "word 2 layers dropout");
}

#[test]
fn mnist_classifier_learned_initial_state() {
    let mut c = build(CellKind::Lstm, Task::SeqMnist, 0, 4, 3, 2, 5, 3, 0.0, Quantizer::Fp, Normalization::None);
    check(&mut c, "mnist 2 layers");
}

/// Give fp weights quantized-like values (±1 and exact zeros), as Q(W) would: weight norm
/// is then checked through the values a quantizer produces. (An all-zero row is a kink of
/// ‖·‖ where central differences mean nothing; weight_norm's unit tests cover it.)
fn quantize_like(c: &mut Case) {
    for layer in &mut c.model.layers {
        for w in [&mut layer.w_x, &mut layer.w_h] {
            w.value.mapv_inplace(|x| {
                if x > 0.05 {
                    1.0
                } else if x < -0.05 {
                    -1.0
                } else {
                    0.0
                }
            });
        }
    }
}

const NORMS: [Normalization; 5] = [
    Normalization::None,
    Normalization::Weight,
    Normalization::Layer,
    Normalization::BatchShared,
    Normalization::BatchSeparate,
];

#[test]
fn every_normalization_two_layers_carried_state_dropout() {
    // The quantizer's own derivative is zero almost everywhere (hence the STE), so each
    // normalization is checked with quantizer fp on quantized-like values; batch norm runs in
    // training mode (batch statistics).
    for norm in NORMS {
        let mut c = build(CellKind::Lstm, Task::PtbChar, 6, 4, 3, 2, 3, 3, 0.25, Quantizer::Fp, norm);
        if norm == Normalization::Weight {
            quantize_like(&mut c);
        }
        check(&mut c, &format!("{norm:?} 2 layers"));
    }
}

#[test]
fn every_normalization_word_model_and_mnist() {
    for norm in NORMS {
        let mut c = build(CellKind::Lstm, Task::PtbWord, 8, 3, 3, 1, 3, 3, 0.2, Quantizer::Fp, norm);
        check(&mut c, &format!("{norm:?} word"));
        // dense inputs 9 wide: N_x keeps x̂ for the window (the cases above recompute it)
        let mut c = build(CellKind::Lstm, Task::PtbWord, 8, 9, 9, 2, 3, 3, 0.2, Quantizer::Fp, norm);
        check(&mut c, &format!("{norm:?} word, 9 wide"));
        let mut c = build(CellKind::Lstm, Task::SeqMnist, 0, 3, 3, 1, 4, 3, 0.0, Quantizer::Fp, norm);
        check(&mut c, &format!("{norm:?} mnist"));
        // pixels of three levels over 24 rows: layer norm's N_x from a table of the levels
        let mut c = build(CellKind::Lstm, Task::SeqMnist, 0, 3, 3, 1, 8, 3, 0.0, Quantizer::Fp, norm);
        c.pixels.mapv_inplace(|p| (p * 3.0).floor() / 3.0);
        check(&mut c, &format!("{norm:?} mnist, three pixel levels"));
    }
}

/// The straight-through estimator hands the latent weights exactly ∂L/∂Q(W): a model run with
/// quantizer q gives the same latent gradients, bit for bit, as an fp model whose weights
/// hold Q(W).
#[test]
fn straight_through_estimator_passes_dl_dq_unchanged() {
    for q in [Quantizer::Bc, Quantizer::Bwn, Quantizer::Lab, Quantizer::Tc, Quantizer::Twn, Quantizer::Lat] {
        for norm in [Normalization::None, Normalization::Weight, Normalization::Layer] {
            let mut a = build(CellKind::Lstm, Task::PtbChar, 6, 4, 3, 2, 3, 2, 0.0, q, norm);
            let mut b = build(CellKind::Lstm, Task::PtbChar, 6, 4, 3, 2, 3, 2, 0.0, Quantizer::Fp, norm);
            for (la, lb) in a.model.layers.iter_mut().zip(b.model.layers.iter_mut()) {
                // a non-uniform curvature for lab/lat (d = √v + 1e-8 from Adam's second moment)
                let v = la.w_h.value.mapv(|x| (0.5 + x.abs()).powi(2));
                la.w_h.moments = Some(qlstm::tensor::Moments { m: Array2::zeros(v.dim()), v });
                let mut cache = qlstm::nn::Cache::default();
                la.prepare_weights(&mut cache);
                lb.w_x.value.assign(&cache.quantized_input_t().t());
                lb.w_h.value.assign(&cache.quantized_recurrent_t().t());
            }
            a.analytic();
            b.analytic();
            let ga: Vec<Array2<f64>> = a.model.params_mut().iter().map(|p| p.grad.clone()).collect();
            let gb: Vec<Array2<f64>> = b.model.params_mut().iter().map(|p| p.grad.clone()).collect();
            assert_eq!(ga, gb, "{q:?}/{norm:?}: latent gradients differ from ∂L/∂Q(W)");
        }
    }
}

/// With two threads, batches of 16 or more split each step's GEMM and cell into two halves,
/// one per thread (batch norm's halves joining their statistics at every step): the same
/// gradients must come out, through every normalization.
#[test]
fn two_thread_batch_split_path() {
    qlstm::tensor::set_threads(2);
    for norm in [Normalization::None, Normalization::Layer, Normalization::BatchShared, Normalization::BatchSeparate] {
        let mut c = build(CellKind::Lstm, Task::PtbChar, 5, 3, 3, 2, 2, 16, 0.2, Quantizer::Fp, norm);
        check(&mut c, &format!("{norm:?} batch 16, 2 threads"));
        // N_x recomputing x̂ from the pixels on two halves of the steps
        let mut c = build(CellKind::Lstm, Task::SeqMnist, 0, 3, 3, 1, 4, 16, 0.0, Quantizer::Fp, norm);
        check(&mut c, &format!("{norm:?} mnist batch 16, 2 threads"));
    }
}

// ---- the GRU (docs/SPEC.md §6), through the same recurrence, quantization and normalization

#[test]
fn gru_every_normalization_two_layers_carried_state_dropout() {
    for norm in NORMS {
        let mut c = build(CellKind::Gru, Task::PtbChar, 6, 4, 3, 2, 3, 3, 0.25, Quantizer::Fp, norm);
        if norm == Normalization::Weight {
            quantize_like(&mut c);
        }
        check(&mut c, &format!("GRU {norm:?} 2 layers"));
    }
}

#[test]
fn gru_every_normalization_word_model_and_mnist() {
    for norm in NORMS {
        let mut c = build(CellKind::Gru, Task::PtbWord, 8, 3, 3, 1, 3, 3, 0.2, Quantizer::Fp, norm);
        check(&mut c, &format!("GRU {norm:?} word"));
        let mut c = build(CellKind::Gru, Task::SeqMnist, 0, 3, 3, 2, 4, 3, 0.0, Quantizer::Fp, norm);
        check(&mut c, &format!("GRU {norm:?} mnist 2 layers"));
    }
}

#[test]
fn gru_quantized_weights_as_parameters() {
    // Quantized-like values (±1 and exact zeros) as an fp model's weights, so every normalization
    // is checked through the values a quantizer produces. The word model's dense embedding
    // input, not one-hot: a one-hot row times ±1 weights gives products that tie exactly across
    // the batch, and batch statistics of zero variance (σ = √ε) are a kink central differences
    // cannot see past.
    for norm in NORMS {
        let mut c = build(CellKind::Gru, Task::PtbWord, 7, 4, 3, 2, 3, 3, 0.2, Quantizer::Fp, norm);
        quantize_like(&mut c);
        check(&mut c, &format!("GRU {norm:?} on ±1/0 weights"));
    }
}

#[test]
fn gru_straight_through_estimator_passes_dl_dq_unchanged() {
    for q in [Quantizer::Bc, Quantizer::Bwn, Quantizer::Lab, Quantizer::Tc, Quantizer::Twn, Quantizer::Lat] {
        for norm in [Normalization::None, Normalization::Weight, Normalization::BatchSeparate] {
            let mut a = build(CellKind::Gru, Task::PtbChar, 6, 4, 3, 2, 3, 2, 0.0, q, norm);
            let mut b = build(CellKind::Gru, Task::PtbChar, 6, 4, 3, 2, 3, 2, 0.0, Quantizer::Fp, norm);
            for (la, lb) in a.model.layers.iter_mut().zip(b.model.layers.iter_mut()) {
                let v = la.w_h.value.mapv(|x| (0.5 + x.abs()).powi(2));
                la.w_h.moments = Some(qlstm::tensor::Moments { m: Array2::zeros(v.dim()), v });
                let mut cache = qlstm::nn::Cache::default();
                la.prepare_weights(&mut cache);
                lb.w_x.value.assign(&cache.quantized_input_t().t());
                lb.w_h.value.assign(&cache.quantized_recurrent_t().t());
            }
            a.analytic();
            b.analytic();
            let ga: Vec<Array2<f64>> = a.model.params_mut().iter().map(|p| p.grad.clone()).collect();
            let gb: Vec<Array2<f64>> = b.model.params_mut().iter().map(|p| p.grad.clone()).collect();
            assert_eq!(ga, gb, "GRU {q:?}/{norm:?}: latent gradients differ from ∂L/∂Q(W)");
        }
    }
}

#[test]
fn gru_two_thread_batch_split_path() {
    qlstm::tensor::set_threads(2);
    for norm in [Normalization::None, Normalization::Layer, Normalization::BatchShared, Normalization::BatchSeparate] {
        let mut c = build(CellKind::Gru, Task::PtbChar, 5, 3, 3, 2, 2, 16, 0.2, Quantizer::Fp, norm);
        check(&mut c, &format!("GRU {norm:?} batch 16, 2 threads"));
    }
}
