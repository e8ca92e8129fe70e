//! The networks of the paper assembled from `nn/`: a language model (one-hot or embedding
//! input → L LSTM layers → softmax over the vocabulary at every step) and the sequential-MNIST
//! classifier (pixels → L LSTM layers with learned h0/c0 → softmax over 10 classes on the last h).
//!
//! Dropout: on the embedding output (`dropout_input`), between LSTM layers (`dropout_between`)
//! and on the last LSTM output (`dropout_output`), fresh masks every window, off in evaluation.

use ndarray::{Array2, ArrayView2, Axis, s};
use ndarray_rand::rand_distr::{Distribution, StandardNormal};
use rand::Rng;

use crate::nn::dropout::sample_mask;
use crate::nn::{Embedding, LayerInput, Linear, LstmCache, LstmGrads, LstmLayer, softmax_cross_entropy};
use crate::spec::{Normalization, Spec, Task};
use crate::tensor::{Param, Real, ensure_shape};

/// What a window feeds the network: token ids (language models) or pixels (T·B, 1).
#[derive(Clone, Copy)]
pub enum Input<'a, T> {
    Tokens(&'a [u32]),
    Pixels(ArrayView2<'a, T>),
}

impl<T> Input<'_, T> {
    fn rows(&self) -> usize {
        match self {
            Input::Tokens(t) => t.len(),
            Input::Pixels(p) => p.nrows(),
        }
    }
}

/// Recurrent state per layer, (B, H) each.
#[derive(Clone, Debug)]
pub struct State<T> {
    pub h: Vec<Array2<T>>,
    pub c: Vec<Array2<T>>,
}

impl<T: Real> State<T> {
    pub fn zeros(layers: usize, batch: usize, hidden: usize) -> Self {
        State { h: vec![Array2::zeros((batch, hidden)); layers], c: vec![Array2::zeros((batch, hidden)); layers] }
    }
}

/// Summed loss (nats), number of predictions, and how many had the target as arg-max.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub loss_sum: f64,
    pub count: usize,
    pub correct: usize,
}

impl Stats {
    pub fn add(&mut self, o: Stats) {
        self.loss_sum += o.loss_sum;
        self.count += o.count;
        self.correct += o.correct;
    }
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
}

#[derive(Default)]
struct Workspace<T> {
    caches: Vec<LstmCache<T>>,
    grads: Vec<LstmGrads<T>>,
    /// Embedding output after input dropout, (N, E).
    emb: Array2<T>,
    mask_in: Array2<T>,
    /// Output of layer l after dropout, feeding layer l+1 (only with dropout_between > 0).
    between: Vec<Array2<T>>,
    masks_between: Vec<Array2<T>>,
    /// The rows the softmax sees, after output dropout.
    top: Array2<T>,
    mask_out: Array2<T>,
    logits: Array2<T>,
    /// ∂L/∂(decoder bias) of the last window, summed by the softmax pass.
    d_bias: Vec<T>,
    /// ∂L/∂(top) and ∂L/∂(outputs of the current layer), (N, H).
    d_top: Array2<T>,
    d_out: Array2<T>,
    /// ∂L/∂(input of a layer), (N, in).
    d_in: Array2<T>,
    batch: usize,
    dropout_on: bool,
}

pub struct Model<T> {
    pub task: Task,
    pub hidden: usize,
    pub embedding: Option<Embedding<T>>,
    pub layers: Vec<LstmLayer<T>>,
    pub decoder: Linear<T>,
    /// Sequential MNIST: learned initial state per layer, (1, H) each.
    pub init_h: Vec<Param<T>>,
    pub init_c: Vec<Param<T>>,
    pub dropout_input: f64,
    pub dropout_between: f64,
    pub dropout_output: f64,
    ws: Workspace<T>,
}

impl<T: Real> Model<T> {
    /// Build and initialise the network of `spec` for a vocabulary of `vocab` symbols
    /// (ignored for MNIST), as SPEC §3 says.
    pub fn new<R: Rng>(spec: &Spec, vocab: usize, rng: &mut R) -> Self {
        let m = &spec.model;
        let h = m.hidden;
        let mnist = spec.task.is_mnist();
        let input = spec.input_size(vocab);
        let layers: Vec<LstmLayer<T>> = (0..m.layers)
            .map(|l| {
                let mut layer = LstmLayer::new(
                    &format!("lstm.{l}"),
                    if l == 0 { input } else { h },
                    h,
                    m.quantizer,
                    m.normalization,
                    spec.train.bptt,
                );
                layer.quantize_input = !(mnist && l == 0);
                layer
            })
            .collect();
        let outputs = if mnist { 10 } else { vocab };
        let mut model = Model {
            task: spec.task,
            hidden: h,
            embedding: spec.task.uses_embedding().then(|| Embedding::new(vocab, m.embedding)),
            layers,
            decoder: Linear::new("decoder", h, outputs),
            init_h: Vec::new(),
            init_c: Vec::new(),
            dropout_input: m.dropout_input,
            dropout_between: m.dropout_between,
            dropout_output: m.dropout_output,
            ws: Workspace::default(),
        };
        if mnist {
            for l in 0..m.layers {
                let p =
                    |n: &str| Param::new(format!("lstm.{l}.{n}"), Array2::zeros((1, h)), crate::tensor::Group::Other);
                model.init_h.push(p("h0"));
                model.init_c.push(p("c0"));
            }
            model.init_mnist(rng);
        } else {
            model.init_language_model(rng);
        }
        model.init_normalizers(rng);
        model
    }

    /// Weight norm: g = row norms of the initial weights. Layer norm: gain 1 (sequential MNIST
    /// 0.1). Batch norm: gain U(0, 1) as torch 0.4.1 initialises it (separate statistics on
    /// sequential MNIST: 0.1). Biases 0, running mean 0, running variance 1.
    fn init_normalizers<R: Rng>(&mut self, rng: &mut R) {
        let mnist = self.task.is_mnist();
        for layer in &mut self.layers {
            layer.init_weight_norm_gains();
            let norm = layer.normalization;
            for n in [layer.norm_x.as_mut(), layer.norm_h.as_mut()].into_iter().flatten() {
                match norm {
                    Normalization::Layer | Normalization::BatchSeparate if mnist => n.gain.value.fill(T::r(0.1)),
                    Normalization::BatchShared | Normalization::BatchSeparate => {
                        n.gain.value.mapv_inplace(|_| T::r(rng.random_range(0.0..1.0)))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every LSTM tensor U(−1/√H, 1/√H); decoder weight U(−0.1, 0.1), bias 0; embedding
    /// U(−0.1, 0.1).
    fn init_language_model<R: Rng>(&mut self, rng: &mut R) {
        let k = 1.0 / (self.hidden as f64).sqrt();
        for layer in &mut self.layers {
            for p in [&mut layer.w_x, &mut layer.w_h, &mut layer.bias] {
                uniform(&mut p.value, k, rng);
            }
        }
        uniform(&mut self.decoder.weight.value, 0.1, rng);
        if let Some(e) = &mut self.embedding {
            uniform(&mut e.weight.value, 0.1, rng);
        }
    }

    /// Forget-gate bias 1, others 0; W_h block a = identity, blocks i, f, o orthogonal;
    /// W_x a random unit-norm vector (layer 0; above it, like W_h's blocks). Decoder as
    /// PyTorch's nn.Linear default, U(−1/√H, 1/√H).
    fn init_mnist<R: Rng>(&mut self, rng: &mut R) {
        let h = self.hidden;
        for (l, layer) in self.layers.iter_mut().enumerate() {
            layer.bias.value.fill(T::zero());
            layer.bias.value.slice_mut(s![0, h..2 * h]).fill(T::one());
            for k in 0..4 {
                let mut block = layer.w_h.value.slice_mut(s![k * h..(k + 1) * h, ..]);
                if k == 2 {
                    block.fill(T::zero());
                    block.diag_mut().fill(T::one());
                } else {
                    block.assign(&orthogonal::<T, R>(h, rng));
                }
            }
            if l == 0 {
                let v: Vec<f64> = (0..4 * h).map(|_| StandardNormal.sample(rng)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                for (w, x) in layer.w_x.value.iter_mut().zip(v) {
                    *w = T::r(x / norm);
                }
            } else {
                for k in 0..4 {
                    layer.w_x.value.slice_mut(s![k * h..(k + 1) * h, ..]).assign(&orthogonal::<T, R>(h, rng));
                }
            }
        }
        let k = 1.0 / (h as f64).sqrt();
        uniform(&mut self.decoder.weight.value, k, rng);
        uniform(&mut self.decoder.bias.value, k, rng);
    }

    /// Every trained tensor, in a fixed order (the optimizer's and the checkpoint's).
    pub fn params_mut(&mut self) -> Vec<&mut Param<T>> {
        let mut v: Vec<&mut Param<T>> = Vec::new();
        if let Some(e) = &mut self.embedding {
            v.push(&mut e.weight);
        }
        for layer in &mut self.layers {
            v.extend(layer.params_mut());
        }
        v.extend(self.init_h.iter_mut());
        v.extend(self.init_c.iter_mut());
        v.extend(self.decoder.params_mut());
        v
    }

    /// Every tensor a checkpoint holds for the model, by name, in a fixed order: the trained
    /// parameters and the batch-norm running statistics (`lstm.L.norm_x.running_mean`, …).
    pub fn named_tensors_mut(&mut self) -> Vec<(String, &mut Array2<T>)> {
        let mut v: Vec<(String, &mut Array2<T>)> = Vec::new();
        if let Some(e) = &mut self.embedding {
            v.push(named(&mut e.weight));
        }
        for layer in &mut self.layers {
            v.extend(layer.named_tensors_mut());
        }
        for p in self.init_h.iter_mut().chain(self.init_c.iter_mut()) {
            v.push(named(p));
        }
        v.push(named(&mut self.decoder.weight));
        v.push(named(&mut self.decoder.bias));
        v
    }

    pub fn zero_grad(&mut self) {
        for p in self.params_mut() {
            p.zero_grad();
        }
    }

    /// The state a window starts from: zeros for language models at the start of an epoch,
    /// the learned h0/c0 for MNIST.
    pub fn initial_state(&self, batch: usize) -> State<T> {
        let mut st = State::zeros(self.layers.len(), batch, self.hidden);
        for (l, (h0, c0)) in self.init_h.iter().zip(&self.init_c).enumerate() {
            st.h[l].assign(&h0.value.broadcast((batch, self.hidden)).unwrap());
            st.c[l].assign(&c0.value.broadcast((batch, self.hidden)).unwrap());
        }
        st
    }

    /// The training-time initial state of sequential MNIST: the learned h0/c0 plus N(0, 0.1²)
    /// noise per sample under layer/batch norm (SPEC §3; evaluation uses no noise).
    pub fn initial_state_train<R: Rng>(&self, batch: usize, rng: &mut R) -> State<T> {
        let mut st = self.initial_state(batch);
        let noisy = self.layers.iter().any(|l| l.norm_h.is_some());
        if noisy && !self.init_h.is_empty() {
            for a in st.h.iter_mut().chain(st.c.iter_mut()) {
                a.mapv_inplace(|v| {
                    let n: f64 = StandardNormal.sample(rng);
                    v + T::r(0.1 * n)
                });
            }
        }
        st
    }

    /// Forward one window from `state`: quantize/normalize weights, run the layers, score the
    /// targets. With `train`, dropout is on (masks from `rng`) and the logits are replaced by the
    /// gradient of the mean loss, ready for `backward`.
    pub fn forward<R: Rng>(
        &mut self,
        input: Input<T>,
        targets: &[u32],
        state: &State<T>,
        train: bool,
        rng: &mut R,
    ) -> Stats {
        let batch = state.h[0].nrows();
        let rows = input.rows();
        let nl = self.layers.len();
        let ws = &mut self.ws;
        ws.batch = batch;
        ws.dropout_on = train;
        ws.caches.resize_with(nl, LstmCache::default);
        ws.grads.resize_with(nl, LstmGrads::default);
        ws.between.resize_with(nl, || Array2::zeros((0, 0)));
        ws.masks_between.resize_with(nl, || Array2::zeros((0, 0)));

        if let (Input::Tokens(ids), Some(e)) = (input, &self.embedding) {
            e.forward(ids, &mut ws.emb);
            if train && self.dropout_input > 0.0 {
                sample_mask(rng, self.dropout_input, rows, ws.emb.ncols(), &mut ws.mask_in);
                ws.emb *= &ws.mask_in;
            }
        }
        for l in 0..nl {
            let (done, rest) = ws.caches.split_at_mut(l);
            let cache = &mut rest[0];
            self.layers[l].prepare_weights(cache);
            let x = if l == 0 {
                match input {
                    Input::Tokens(ids) if self.embedding.is_none() => LayerInput::OneHot(ids),
                    Input::Tokens(_) => LayerInput::Dense(ws.emb.view()),
                    Input::Pixels(p) => LayerInput::Dense(p),
                }
            } else if train && self.dropout_between > 0.0 {
                LayerInput::Dense(ws.between[l - 1].view())
            } else {
                LayerInput::Dense(done[l - 1].output())
            };
            self.layers[l].forward(cache, x, state.h[l].view(), state.c[l].view(), train);
            if l + 1 < nl && train && self.dropout_between > 0.0 {
                let out = cache.output();
                sample_mask(rng, self.dropout_between, rows, self.hidden, &mut ws.masks_between[l]);
                ensure_shape(&mut ws.between[l], rows, self.hidden);
                ws.between[l].assign(&out);
                ws.between[l] *= &ws.masks_between[l];
            }
        }
        let out = ws.caches[nl - 1].output();
        // Language models predict at every step; the classifier only from the last h.
        let top = if self.task.is_mnist() { out.slice_move(s![rows - batch.., ..]) } else { out };
        ensure_shape(&mut ws.top, top.nrows(), top.ncols());
        ws.top.assign(&top);
        if train && self.dropout_output > 0.0 {
            let (r, c) = ws.top.dim();
            sample_mask(rng, self.dropout_output, r, c, &mut ws.mask_out);
            ws.top *= &ws.mask_out;
        }
        self.decoder.forward_unbiased(ws.top.view(), &mut ws.logits);
        let count = targets.len();
        assert_eq!(count, ws.logits.nrows(), "one target per prediction");
        let (loss_sum, correct) = softmax_cross_entropy(
            &mut ws.logits,
            targets,
            T::r(1.0 / count as f64),
            self.decoder.bias.value.as_slice().unwrap(),
            &mut ws.d_bias,
        );
        Stats { loss_sum, count, correct }
    }

    /// Backward through the window `forward` just ran (with `train`). Accumulates every
    /// parameter's gradient; leaves ∂L/∂(initial state) in `state_grad()`.
    pub fn backward(&mut self, input: Input<T>) {
        let ws = &mut self.ws;
        let nl = self.layers.len();
        let rows = input.rows();
        let (batch, h) = (ws.batch, self.hidden);
        let top_rows = ws.top.nrows();
        ensure_shape(&mut ws.d_top, top_rows, h);
        self.decoder.backward(ws.top.view(), ws.logits.view(), &ws.d_bias, Some(ws.d_top.view_mut()));
        if ws.dropout_on && self.dropout_output > 0.0 {
            ws.d_top *= &ws.mask_out;
        }
        ensure_shape(&mut ws.d_out, rows, h);
        if self.task.is_mnist() {
            ws.d_out.fill(T::zero());
            ws.d_out.slice_mut(s![rows - batch.., ..]).assign(&ws.d_top);
        } else {
            ws.d_out.assign(&ws.d_top);
        }
        let between_on = ws.dropout_on && self.dropout_between > 0.0;
        for l in (0..nl).rev() {
            let (below, rest) = ws.caches.split_at_mut(l);
            let cache = &rest[0];
            let x = if l == 0 {
                match input {
                    Input::Tokens(ids) if self.embedding.is_none() => LayerInput::OneHot(ids),
                    Input::Tokens(_) => LayerInput::Dense(ws.emb.view()),
                    Input::Pixels(p) => LayerInput::Dense(p),
                }
            } else if between_on {
                LayerInput::Dense(ws.between[l - 1].view())
            } else {
                LayerInput::Dense(below[l - 1].output())
            };
            let needs_dx = l > 0 || self.embedding.is_some();
            let in_size = self.layers[l].input_size;
            let dx = if needs_dx {
                ensure_shape(&mut ws.d_in, rows, in_size);
                Some(ws.d_in.view_mut())
            } else {
                None
            };
            self.layers[l].backward(cache, &mut ws.grads[l], x, ws.d_out.view(), dx);
            if needs_dx {
                // ∂L/∂x of this layer is ∂L/∂(outputs) of the one below (or of the embedding).
                std::mem::swap(&mut ws.d_out, &mut ws.d_in);
                if l > 0 && between_on {
                    ws.d_out *= &ws.masks_between[l - 1];
                }
            }
        }
        if let (Input::Tokens(ids), Some(e)) = (input, &mut self.embedding) {
            if ws.dropout_on && self.dropout_input > 0.0 {
                ws.d_out *= &ws.mask_in;
            }
            e.backward(ids, ws.d_out.view());
        }
        for (l, (h0, c0)) in self.init_h.iter_mut().zip(self.init_c.iter_mut()).enumerate() {
            h0.grad.row_mut(0).zip_mut_with(&ws.grads[l].dh.sum_axis(Axis(0)), |a, &b| *a += b);
            c0.grad.row_mut(0).zip_mut_with(&ws.grads[l].dc.sum_axis(Axis(0)), |a, &b| *a += b);
        }
    }

    /// The state at the end of the last window (carried, detached, into the next).
    pub fn final_state(&self) -> State<T> {
        let (h, c) = self
            .ws
            .caches
            .iter()
            .map(|cache| {
                let (h, c) = cache.final_state();
                (h.to_owned(), c.to_owned())
            })
            .unzip();
        State { h, c }
    }

    /// The caches of the window `forward` last ran, one per layer (for diagnostics).
    pub fn caches(&self) -> &[LstmCache<T>] {
        &self.ws.caches
    }

    /// ‖∂ξ/∂h_t‖ over the batch for every step t of the last backward, per layer.
    pub fn grad_norms(&self) -> Vec<&[f64]> {
        self.ws.grads.iter().map(|g| g.h_grad_norms.as_slice()).collect()
    }

    /// ∂L/∂(initial h, c) of every layer after `backward` (for tests and diagnostics).
    pub fn state_grad(&self) -> State<T> {
        State {
            h: self.ws.grads.iter().map(|g| g.dh.clone()).collect(),
            c: self.ws.grads.iter().map(|g| g.dc.clone()).collect(),
        }
    }
}

fn named<T>(p: &mut Param<T>) -> (String, &mut Array2<T>) {
    (p.name.clone(), &mut p.value)
}

fn uniform<T: Real, R: Rng>(a: &mut Array2<T>, k: f64, rng: &mut R) {
    for x in a.iter_mut() {
        *x = T::r(rng.random_range(-k..k));
    }
}

/// An n×n orthogonal matrix: Gram–Schmidt (twice, for stability) on a Gaussian matrix.
fn orthogonal<T: Real, R: Rng>(n: usize, rng: &mut R) -> Array2<T> {
    let mut q: Vec<Vec<f64>> = (0..n).map(|_| (0..n).map(|_| StandardNormal.sample(rng)).collect()).collect();
    for j in 0..n {
        for _ in 0..2 {
            for k in 0..j {
                let (done, rest) = q.split_at_mut(j);
                let (v, u) = (&mut rest[0], &done[k]);
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
        }
        let norm = q[j].iter().map(|x| x * x).sum::<f64>().sqrt();
        q[j].iter_mut().for_each(|x| *x /= norm);
    }
    // columns of the result are the orthonormal vectors
    Array2::from_shape_fn((n, n), |(i, j)| T::r(q[j][i]))
}
