//! Batch norm of the recurrent product on two halves of the batch (two threads, the halves
//! joining their column statistics at every step) computes what one thread computes on the
//! whole batch: loss, every gradient and the running statistics agree to rounding, in f64, for
//! both batch norms, both cells, two windows with carried state (the running statistics of the
//! first window feed nothing in training, so they are compared after both), and the evaluation
//! forward on running statistics; without batch statistics the two agree bit for bit. A test
//! binary of its own: the thread count is global.

use ndarray::Array2;
use qlstm::model::{Input, Model};
use qlstm::spec::{CellKind, Normalization, Quantizer, Spec, Task};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

struct Outcome {
    losses: Vec<f64>,
    eval_loss: f64,
    tensors: Vec<(String, Array2<f64>)>,
    grads: Vec<(String, Array2<f64>)>,
}

/// The tests of this binary run one at a time: the thread count is global.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(cell: CellKind, norm: Normalization, threads: usize) -> Outcome {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    qlstm::tensor::set_threads(threads);
    assert_eq!(qlstm::tensor::threads(), threads);
    let (vocab, batch, steps) = (11, 32, 6);
    let mut spec = Spec::defaults(Task::PtbChar);
    spec.model.cell = cell;
    spec.model.hidden = 8;
    spec.model.layers = 2;
    spec.model.quantizer = Quantizer::Fp;
    spec.model.normalization = norm;
    let mut rng = Pcg64Mcg::seed_from_u64(3);
    let mut model = Model::<f64>::new(&spec.model_config(vocab), &mut rng);
    let tokens: Vec<u32> = (0..2 * steps * batch).map(|_| rng.random_range(0..vocab as u32)).collect();
    let targets: Vec<u32> = (0..2 * steps * batch).map(|_| rng.random_range(0..vocab as u32)).collect();
    let mut state = model.zero_state(batch);
    let mut losses = Vec::new();
    model.zero_grad();
    for w in 0..2 {
        let r = w * steps * batch..(w + 1) * steps * batch;
        let mut drop_rng = Pcg64Mcg::seed_from_u64(5);
        let out = model.forward(Input::Tokens(&tokens[r.clone()]), &targets[r.clone()], &state, true, &mut drop_rng);
        losses.push(out.mean_loss());
        model.backward(Input::Tokens(&tokens[r]));
        state = model.final_state();
    }
    let mut drop_rng = Pcg64Mcg::seed_from_u64(5);
    let eval_loss = model
        .forward(Input::Tokens(&tokens[..steps * batch]), &targets[..steps * batch], &state, false, &mut drop_rng)
        .mean_loss();
    let grads = model.params_mut().iter().map(|p| (p.name.clone(), p.grad.clone())).collect();
    let tensors = model.named_tensors_mut().into_iter().map(|(n, a)| (n, a.clone())).collect();
    Outcome { losses, eval_loss, tensors, grads }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-11 * a.abs().max(b.abs()) + 1e-13
}

#[test]
fn batch_norm_on_two_halves_equals_the_whole_batch() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for norm in [Normalization::BatchShared, Normalization::BatchSeparate] {
            let one = run(cell, norm, 1);
            let two = run(cell, norm, 2);
            let what = format!("{cell:?} {norm:?}");
            for (a, b) in one.losses.iter().zip(&two.losses) {
                assert!(close(*a, *b), "{what}: training loss {a} vs {b}");
            }
            assert!(close(one.eval_loss, two.eval_loss), "{what}: eval loss {} vs {}", one.eval_loss, two.eval_loss);
            let mut running = 0;
            for ((name, a), (_, b)) in one.tensors.iter().chain(&one.grads).zip(two.tensors.iter().chain(&two.grads)) {
                running += name.contains("running") as usize;
                for (x, y) in a.iter().zip(b) {
                    assert!(close(*x, *y), "{what}: {name} {x} vs {y}");
                }
            }
            let differ = one.grads.iter().zip(&two.grads).filter(|((_, a), (_, b))| a != b).count();
            // the halves add their sums in another order: rounding differs somewhere, or the
            // two-thread run did not take the split path at all
            assert!(differ > 0, "{what}: two threads gave bit-identical gradients; was the batch split?");
            assert_eq!(running, 8, "{what}: running mean and variance of 2 products × 2 layers compared");
            // the running statistics moved off their initial 0 and 1
            let rm = &one.tensors.iter().find(|(n, _)| n.ends_with("norm_h.running_mean")).unwrap().1;
            assert!(rm.iter().any(|&v| v.abs() > 1e-3), "{what}: running mean updated");
        }
    }
}

/// Without batch statistics the halves never exchange sums, and what the backward's steps sum
/// — the recurrent layer norm's ∂L/∂γ, ∂L/∂β; for the token input (11 ids, 192 rows) ∂L/∂W_x,
/// ∂L/∂b and the input layer norm's γ, β — is summed per half of the rows whether one thread
/// runs both halves or two threads one each (`param_groups`): one and two threads give the
/// same bits.
#[test]
fn row_local_normalizers_on_two_halves_are_bit_identical() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for norm in [Normalization::None, Normalization::Layer] {
            let one = run(cell, norm, 1);
            let two = run(cell, norm, 2);
            let what = format!("{cell:?} {norm:?}");
            assert_eq!(one.losses, two.losses, "{what}: training losses");
            assert_eq!(one.eval_loss, two.eval_loss, "{what}: eval loss");
            for ((name, a), (_, b)) in one.grads.iter().zip(&two.grads) {
                assert_eq!(a, b, "{what}: {name} differs between one thread and two");
            }
        }
    }
}
