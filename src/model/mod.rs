//! The networks of the paper assembled from `nn/`: an input (one-hot, a trained embedding, or
//! pixels), L recurrent layers, and an output head — a softmax over the vocabulary at every step
//! (language models) or over the classes from the last h (the sequential-MNIST classifier, with
//! learned h0/c0). What to build comes as a `ModelConfig` (`Spec::model_config` makes one).
//!
//! Dropout: on the embedding output (`dropout_input`), between layers (`dropout_between`) and
//! on the last layer's output (`dropout_output`), fresh masks every window, off in evaluation.

use ndarray::{Array2, ArrayView2, Axis, s};
use ndarray_rand::rand_distr::{Distribution, StandardNormal};
use rand::Rng;

use crate::nn::dropout::sample_mask;
use crate::nn::softmax_cross_entropy;
use crate::nn::{
    Cache, CellKind, Embedding, Grads, Layer, LayerInput, Linear, Normalization, OutputGrad, Quantizer, Stats,
};
use crate::tensor::{Group, Param, Precision, Real, ensure_shape};

mod init;

/// How the first layer is fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Token ids as one-hot vectors over `vocab` symbols (a row gather of W_x).
    OneHot { vocab: usize },
    /// Token ids through a trained full-precision embedding (V, E).
    Embedding { vocab: usize, dim: usize },
    /// One pixel per step (width 1).
    Pixels,
}

impl InputKind {
    /// Width of the first layer's input.
    pub fn width(self) -> usize {
        match self {
            InputKind::OneHot { vocab } => vocab,
            InputKind::Embedding { dim, .. } => dim,
            InputKind::Pixels => 1,
        }
    }
}

/// What the output layer predicts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Every step's h predicts the next token (language models).
    EveryStep,
    /// The last step's h predicts the class of the sequence (sequential MNIST).
    LastStep,
}

/// The initialisations of docs/SPEC.md §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Every recurrent tensor U(−1/√H, 1/√H); decoder U(−0.1, 0.1), bias 0; embedding U(−0.1, 0.1).
    LanguageModel,
    /// Forget bias 1; W_h block a = identity, the others orthogonal; W_x a unit vector; learned
    /// h0/c0 (with N(0, 0.1²) training noise under layer/batch norm); LN and separate-BN gains 0.1.
    SeqMnist,
}

/// Everything that shapes a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub cell: CellKind,
    pub input: InputKind,
    pub head: Head,
    /// Softmax width: the vocabulary, or the classes.
    pub outputs: usize,
    pub hidden: usize,
    pub layers: usize,
    pub quantizer: Quantizer,
    pub normalization: Normalization,
    /// Quantize the first layer's W_x too (false for sequential MNIST: its 4H×1 input weights
    /// stay at full precision, docs/SPEC.md §2).
    pub quantize_first_input: bool,
    /// Time slots of separate batch statistics (T_max = bptt).
    pub batch_slots: usize,
    pub dropout_input: f64,
    pub dropout_between: f64,
    pub dropout_output: f64,
    pub init: Init,
    /// Precision of the recurrent per-step products (`[train] gemm_precision`).
    pub gemm_precision: Precision,
}

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

#[derive(Default)]
struct Workspace<T> {
    caches: Vec<Cache<T>>,
    grads: Vec<Grads<T>>,
    /// Embedding output after input dropout, (N, E).
    emb: Array2<T>,
    mask_in: Array2<T>,
    /// Output of layer l after dropout, feeding layer l+1 (only with dropout_between > 0).
    between: Vec<Array2<T>>,
    masks_between: Vec<Array2<T>>,
    /// The rows the softmax sees when output dropout is on (the top layer's output times the
    /// mask); without it the softmax reads the layer's output in place (`top_rows`).
    top: Array2<T>,
    mask_out: Array2<T>,
    logits: Array2<T>,
    /// `keep_logits`: the last forward's logits.
    kept: Array2<T>,
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
    pub head: Head,
    pub init: Init,
    pub hidden: usize,
    pub embedding: Option<Embedding<T>>,
    pub layers: Vec<Layer<T>>,
    pub decoder: Linear<T>,
    /// Sequential MNIST: learned initial state per layer, (1, H) each.
    pub init_h: Vec<Param<T>>,
    pub init_c: Vec<Param<T>>,
    pub dropout_input: f64,
    pub dropout_between: f64,
    pub dropout_output: f64,
    /// Dropout masks to use instead of drawing them (a parity test's, made by PyTorch).
    pub fixed_masks: Option<DropoutMasks<T>>,
    /// Keep each training forward's logits (with the bias) for `kept_logits` (a parity test's).
    pub keep_logits: bool,
    ws: Workspace<T>,
}

/// Dropout masks of one window (0 or 1/(1 − p)): the embedding output (T·B, E), between layers
/// (T·B, H) each, the top layer's output (the softmax's rows, H).
#[derive(Clone, Debug, Default)]
pub struct DropoutMasks<T> {
    pub input: Option<Array2<T>>,
    pub between: Vec<Array2<T>>,
    pub output: Option<Array2<T>>,
}

/// The rows of the top layer's output the softmax reads: every step's (language models) or
/// the last step's `batch` rows (the classifier).
fn top_rows<T>(head: Head, out: ArrayView2<'_, T>, batch: usize) -> ArrayView2<'_, T> {
    match head {
        Head::EveryStep => out,
        Head::LastStep => {
            let rows = out.nrows();
            out.slice_move(s![rows - batch.., ..])
        }
    }
}

/// A window's dropout mask: the fixed one if given, else drawn from `rng`.
fn draw_mask<T: Real, R: Rng>(
    fixed: Option<&Array2<T>>,
    rng: &mut R,
    p: f64,
    rows: usize,
    cols: usize,
    mask: &mut Array2<T>,
) {
    match fixed {
        Some(m) => {
            ensure_shape(mask, rows, cols);
            mask.assign(m);
        }
        None => sample_mask(rng, p, rows, cols, mask),
    }
}

impl<T: Real> Model<T> {
    /// Build and initialise the network `config` describes (docs/SPEC.md §3).
    pub fn new<R: Rng>(config: &ModelConfig, rng: &mut R) -> Self {
        let h = config.hidden;
        let layers: Vec<Layer<T>> = (0..config.layers)
            .map(|l| {
                let input = if l == 0 { config.input.width() } else { h };
                let mut layer = Layer::new(
                    &format!("{}.{l}", config.cell),
                    config.cell,
                    input,
                    h,
                    config.quantizer,
                    config.normalization,
                    config.batch_slots,
                );
                layer.quantize_input = l > 0 || config.quantize_first_input;
                layer.precision = config.gemm_precision;
                layer
            })
            .collect();
        let embedding = match config.input {
            InputKind::Embedding { vocab, dim } => Some(Embedding::new(vocab, dim)),
            _ => None,
        };
        let mut decoder = Linear::new("decoder", h, config.outputs);
        decoder.precision = config.gemm_precision;
        let mut model = Model {
            head: config.head,
            init: config.init,
            hidden: h,
            embedding,
            layers,
            decoder,
            init_h: Vec::new(),
            init_c: Vec::new(),
            dropout_input: config.dropout_input,
            dropout_between: config.dropout_between,
            dropout_output: config.dropout_output,
            fixed_masks: None,
            keep_logits: false,
            ws: Workspace::default(),
        };
        match config.init {
            Init::SeqMnist => {
                for l in 0..config.layers {
                    let p =
                        |n: &str| Param::new(format!("{}.{l}.{n}", config.cell), Array2::zeros((1, h)), Group::Other);
                    model.init_h.push(p("h0"));
                    if config.cell.carries_c() {
                        model.init_c.push(p("c0"));
                    }
                }
                model.init_mnist(rng);
            }
            Init::LanguageModel => model.init_language_model(rng),
        }
        model.init_normalizers(rng);
        model
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
        let mut st = self.zero_state(batch);
        for (l, h0) in self.init_h.iter().enumerate() {
            st.h[l].assign(&h0.value.broadcast((batch, self.hidden)).unwrap());
        }
        for (l, c0) in self.init_c.iter().enumerate() {
            st.c[l].assign(&c0.value.broadcast((batch, self.hidden)).unwrap());
        }
        st
    }

    /// The all-zero state of a batch: h (B, H) per layer, and c (B, H) for a cell that has one
    /// ((B, 0) for the GRU).
    pub fn zero_state(&self, batch: usize) -> State<T> {
        let c = self.layers.first().is_some_and(|l| l.cell.carries_c());
        let n = self.layers.len();
        State {
            h: vec![Array2::zeros((batch, self.hidden)); n],
            c: vec![Array2::zeros((batch, if c { self.hidden } else { 0 })); n],
        }
    }

    /// The training-time initial state of sequential MNIST: the learned h0/c0 plus N(0, 0.1²)
    /// noise per sample under layer/batch norm (docs/SPEC.md §3; evaluation uses no noise).
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
        self.forward_logits(input, state, train, 0, rng);
        let ws = &mut self.ws;
        if self.keep_logits {
            ensure_shape(&mut ws.kept, ws.logits.nrows(), ws.logits.ncols());
            ws.kept.assign(&ws.logits);
            ws.kept += &self.decoder.bias.value.row(0);
        }
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

    /// The logits of the last `forward` (with the bias), when `keep_logits` is on.
    pub fn kept_logits(&self) -> ArrayView2<'_, T> {
        self.ws.kept.view()
    }

    /// The logits (with the output bias) of a window in evaluation mode, one row per
    /// prediction: what sampling draws from. `t0`: the in-window time index of its first step
    /// (sampling one step at a time continues a window of bptt steps).
    pub fn predict(&mut self, input: Input<T>, state: &State<T>, t0: usize) -> ArrayView2<'_, T> {
        let mut unused = rand_pcg::Pcg64Mcg::new(0); // no dropout in evaluation
        self.forward_logits(input, state, false, t0, &mut unused);
        let bias = self.decoder.bias.value.row(0);
        self.ws.logits += &bias;
        self.ws.logits.view()
    }

    /// Everything of `forward` up to the logits without the output bias (in `ws.logits`).
    fn forward_logits<R: Rng>(&mut self, input: Input<T>, state: &State<T>, train: bool, t0: usize, rng: &mut R) {
        let batch = state.h[0].nrows();
        let rows = input.rows();
        let nl = self.layers.len();
        let ws = &mut self.ws;
        ws.batch = batch;
        ws.dropout_on = train;
        ws.caches.resize_with(nl, Cache::default);
        ws.grads.resize_with(nl, Grads::default);
        ws.between.resize_with(nl, || Array2::zeros((0, 0)));
        ws.masks_between.resize_with(nl, || Array2::zeros((0, 0)));

        if let (Input::Tokens(ids), Some(e)) = (input, &self.embedding) {
            e.forward(ids, &mut ws.emb);
            if train && self.dropout_input > 0.0 {
                let fixed = self.fixed_masks.as_ref().and_then(|m| m.input.as_ref());
                draw_mask(fixed, rng, self.dropout_input, rows, ws.emb.ncols(), &mut ws.mask_in);
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
            self.layers[l].forward(cache, x, state.h[l].view(), state.c[l].view(), train, t0);
            if l + 1 < nl && train && self.dropout_between > 0.0 {
                let out = cache.output();
                let fixed = self.fixed_masks.as_ref().and_then(|m| m.between.get(l));
                draw_mask(fixed, rng, self.dropout_between, rows, self.hidden, &mut ws.masks_between[l]);
                ensure_shape(&mut ws.between[l], rows, self.hidden);
                ws.between[l].assign(&out);
                ws.between[l] *= &ws.masks_between[l];
            }
        }
        let top = top_rows(self.head, ws.caches[nl - 1].output(), batch);
        if train && self.dropout_output > 0.0 {
            ensure_shape(&mut ws.top, top.nrows(), top.ncols());
            ws.top.assign(&top);
            let (r, c) = ws.top.dim();
            let fixed = self.fixed_masks.as_ref().and_then(|m| m.output.as_ref());
            draw_mask(fixed, rng, self.dropout_output, r, c, &mut ws.mask_out);
            ws.top *= &ws.mask_out;
            self.decoder.forward_unbiased(ws.top.view(), &mut ws.logits);
        } else {
            // no copy of the window's top rows (13 MB on PTB-char, single-threaded)
            self.decoder.forward_unbiased(top, &mut ws.logits);
        }
    }

    /// Backward through the window `forward` just ran (with `train`). Accumulates every
    /// parameter's gradient; leaves ∂L/∂(initial state) in `state_grad()`.
    pub fn backward(&mut self, input: Input<T>) {
        let ws = &mut self.ws;
        let nl = self.layers.len();
        let rows = input.rows();
        let h = self.hidden;
        let dropped = ws.dropout_on && self.dropout_output > 0.0;
        // the rows the forward's softmax read: the masked copy, or the top layer's output
        let top = if dropped { ws.top.view() } else { top_rows(self.head, ws.caches[nl - 1].output(), ws.batch) };
        ensure_shape(&mut ws.d_top, top.nrows(), h);
        self.decoder.backward(top, ws.logits.view(), &ws.d_bias, Some(ws.d_top.view_mut()));
        if dropped {
            ws.d_top *= &ws.mask_out;
        }
        // ∂L/∂h_t from above: the top layer reads ∂L/∂top (every step's, or the classifier's
        // last step's alone), each layer below the ∂L/∂x of the one above it (in d_out)
        if self.head == Head::EveryStep {
            // d_top is every step's ∂L/∂h: handed over, not copied, when d_out's buffer can take
            // d_top's place (an embedding narrower or wider than H leaves it another shape)
            if ws.d_out.dim() == ws.d_top.dim() {
                std::mem::swap(&mut ws.d_out, &mut ws.d_top);
            } else {
                ensure_shape(&mut ws.d_out, rows, h);
                ws.d_out.assign(&ws.d_top);
            }
        }
        let between_on = ws.dropout_on && self.dropout_between > 0.0;
        for l in (0..nl).rev() {
            let (below, rest) = ws.caches.split_at_mut(l);
            let cache = &mut rest[0];
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
            let d_out = match self.head {
                Head::LastStep if l + 1 == nl => OutputGrad::LastStep(ws.d_top.view()),
                _ => OutputGrad::EveryStep(ws.d_out.view()),
            };
            self.layers[l].backward(cache, &mut ws.grads[l], x, d_out, dx);
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
        for (l, h0) in self.init_h.iter_mut().enumerate() {
            let (dh, _) = ws.grads[l].initial_state();
            h0.grad.row_mut(0).zip_mut_with(&dh.sum_axis(Axis(0)), |a, &b| *a += b);
        }
        for (l, c0) in self.init_c.iter_mut().enumerate() {
            let (_, dc) = ws.grads[l].initial_state();
            c0.grad.row_mut(0).zip_mut_with(&dc.sum_axis(Axis(0)), |a, &b| *a += b);
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
    pub fn caches(&self) -> &[Cache<T>] {
        &self.ws.caches
    }

    /// ‖∂ξ/∂h_t‖ over the batch for every step t of the last backward, per layer.
    pub fn grad_norms(&self) -> Vec<&[f64]> {
        self.ws.grads.iter().map(|g| g.h_grad_norms()).collect()
    }

    /// ∂L/∂(initial h, c) of every layer after `backward` (for tests and diagnostics).
    pub fn state_grad(&self) -> State<T> {
        let (h, c) = self.ws.grads.iter().map(|g| g.initial_state()).map(|(h, c)| (h.to_owned(), c.to_owned())).unzip();
        State { h, c }
    }
}

fn named<T>(p: &mut Param<T>) -> (String, &mut Array2<T>) {
    (p.name.clone(), &mut p.value)
}
