//! The TOML experiment spec: serde structs, the paper's recipe as per-task defaults
//! (docs/SPEC.md §3), and the model a spec describes (`model_config`). Reading one from a file
//! with `--set` overrides and validation is `load.rs`.

use serde::{Deserialize, Serialize};

use crate::model::{Head, Init, InputKind, ModelConfig};
use crate::names::named_enum;
pub use crate::nn::{CellKind, Normalization, Quantizer};

mod load;

named_enum! {
    /// The datasets and recipes of docs/SPEC.md §3.
    pub enum Task {
        PtbChar = "ptb_char",
        Warpeace = "warpeace",
        Text8 = "text8",
        PtbWord = "ptb_word",
        SeqMnist = "seq_mnist",
        Pmnist = "pmnist",
    }
}

impl Task {
    pub fn is_mnist(self) -> bool {
        matches!(self, Task::SeqMnist | Task::Pmnist)
    }
    /// Word-level input goes through a trained embedding; char/byte input is one-hot.
    pub fn uses_embedding(self) -> bool {
        self == Task::PtbWord
    }
    /// The `scripts/get_data.sh` target that provides this task's files.
    pub fn data_target(self) -> &'static str {
        match self {
            Task::PtbChar | Task::PtbWord => "ptb",
            Task::Warpeace => "warpeace",
            Task::Text8 => "text8",
            Task::SeqMnist | Task::Pmnist => "mnist",
        }
    }
    /// The vocabulary of the task's standard data (softmax width; 10 classes for MNIST), for
    /// sizes and memory estimates made without the data.
    pub fn standard_vocab(self) -> usize {
        match self {
            Task::PtbChar => 50,
            Task::PtbWord => 10000,
            Task::Text8 => 27,
            Task::Warpeace => 87,
            Task::SeqMnist | Task::Pmnist => 10,
        }
    }
}

/// `[train] gemm_precision` (src/tensor/amx.rs): f32, or bf16 operands with f32 sums on AMX
/// or on AVX512-BF16 (opt-in; needs AMX-BF16, or AVX512-BF16 on an AMD CPU).
pub use crate::tensor::Precision as GemmPrecision;

named_enum! {
    pub enum Optimizer {
        Adam = "adam",
        Sgd = "sgd",
    }
}

named_enum! {
    /// How the learning rate moves between epochs (docs/SPEC.md §3).
    pub enum Schedule {
        /// After `lr_decay_start` epochs, the latent weights' lr × `lr_decay` each epoch
        /// (char/byte language models with Adam); other parameters keep theirs.
        LatentDecay = "latent_decay",
        /// Whenever validation loss does not improve, every lr ÷ `plateau_factor` (ptb_word, SGD).
        Plateau = "plateau",
        /// Every epoch, every lr × `lr_decay` (sequential MNIST: 0.002 → 0.001 over 200 epochs).
        Geometric = "geometric",
        /// No change (text8).
        Constant = "constant",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Directory holding ptb/, ptb_char/, warpeace/, text8/, mnist/. A resolved spec holds an
    /// absolute path: a relative one is resolved once, when the spec is read, against the
    /// directory qlstm was started from; without one, `$QLSTM_DATA` or `data` is used.
    pub dir: String,
    /// Seed of the fixed pixel permutation of pmnist (independent of the run's seed).
    pub permutation_seed: u64,
    /// How `dir` was arrived at, for messages ("the default `data` resolved against …").
    #[serde(skip)]
    pub dir_origin: String,
}

/// Specs are equal when they describe the same experiment: how `data.dir` was found is not part
/// of it.
impl PartialEq for DataSpec {
    fn eq(&self, o: &Self) -> bool {
        self.dir == o.dir && self.permutation_seed == o.permutation_seed
    }
}

/// The environment variable that points every spec without a `data.dir` at a data directory
/// (a shared one on a cluster, say).
pub const DATA_ENV: &str = "QLSTM_DATA";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The recurrent cell: lstm, or gru (docs/SPEC.md §6).
    pub cell: CellKind,
    pub hidden: usize,
    pub layers: usize,
    /// Word-embedding width (ptb_word); 0 for one-hot (char/byte) and pixel input.
    pub embedding: usize,
    pub quantizer: Quantizer,
    pub normalization: Normalization,
    pub dropout_input: f64,
    pub dropout_between: f64,
    pub dropout_output: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub optimizer: Optimizer,
    pub lr: f64,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub bptt: usize,
    /// Global-norm gradient clipping threshold; 0 disables clipping.
    pub clip: f64,
    pub epochs: usize,
    /// Stop after this many optimizer steps (then evaluate); 0 = no cap.
    pub max_steps: usize,
    pub schedule: Schedule,
    pub lr_decay: f64,
    pub lr_decay_start: usize,
    pub plateau_factor: f64,
    /// Multiplier on the latent LSTM weights' lr (ptb_word with SGD and bc/tc: 2√H).
    pub latent_lr_scale: f64,
    /// Write checkpoint.safetensors every this many steps (and at every epoch end); 0 = epoch
    /// ends only.
    pub checkpoint_every: usize,
    /// A mean training loss above this (nats) stops the run as diverged; 0 = 3·ln(outputs).
    pub max_loss: f64,
    /// "f32" (default), or "bf16": the per-step recurrent products on AMX tiles, or on
    /// AVX512-BF16 on AMD CPUs.
    pub gemm_precision: GemmPrecision,
}

/// The λ1 and gradient-norm traces (docs/SPEC.md §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosticsSpec {
    pub enabled: bool,
    /// λ1 every this many optimizer steps, and at step 0; 0 = about 30 points per epoch.
    pub lambda_every: usize,
    /// ‖∂ξ/∂h_t‖ for every t of the window every this many steps; 0 = about 5 per epoch.
    pub grad_every: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub task: Task,
    pub seed: u64,
    pub data: DataSpec,
    pub model: ModelSpec,
    pub train: TrainSpec,
    pub diagnostics: DiagnosticsSpec,
}

impl Spec {
    /// The paper's recipe for a task (docs/SPEC.md §3), full precision, no normalization.
    pub fn defaults(task: Task) -> Spec {
        let model = ModelSpec {
            cell: CellKind::Lstm,
            hidden: 512,
            layers: 1,
            embedding: 0,
            quantizer: Quantizer::Fp,
            normalization: Normalization::None,
            dropout_input: 0.0,
            dropout_between: 0.0,
            dropout_output: 0.0,
        };
        let train = TrainSpec {
            optimizer: Optimizer::Adam,
            lr: 0.002,
            batch_size: 64,
            eval_batch_size: 64,
            bptt: 100,
            clip: 5.0,
            epochs: 200,
            max_steps: 0,
            schedule: Schedule::LatentDecay,
            lr_decay: 0.98,
            lr_decay_start: 10,
            plateau_factor: 4.0,
            latent_lr_scale: 1.0,
            checkpoint_every: 1000,
            max_loss: 0.0,
            gemm_precision: GemmPrecision::F32,
        };
        let mut s = Spec {
            name: task.name().to_string(),
            task,
            seed: 1111,
            data: DataSpec { dir: "data".into(), permutation_seed: 1234, dir_origin: String::new() },
            model,
            train,
            diagnostics: DiagnosticsSpec { enabled: true, lambda_every: 0, grad_every: 0 },
        };
        match task {
            Task::PtbChar | Task::Warpeace => {}
            Task::Text8 => {
                s.model.hidden = 2000;
                s.train.bptt = 180;
                s.train.schedule = Schedule::Constant;
            }
            Task::PtbWord => {
                s.model.hidden = 300;
                s.model.embedding = 300;
                s.model.dropout_input = 0.5;
                s.model.dropout_output = 0.5;
                s.train.optimizer = Optimizer::Sgd;
                s.train.lr = 20.0;
                s.train.batch_size = 20;
                s.train.bptt = 35;
                s.train.clip = 0.25;
                s.train.epochs = 120;
                s.train.schedule = Schedule::Plateau;
            }
            Task::SeqMnist | Task::Pmnist => {
                s.model.hidden = 100;
                s.train.batch_size = 100;
                s.train.eval_batch_size = 100;
                s.train.bptt = 784;
                s.train.clip = 1.0;
                s.train.schedule = Schedule::Geometric;
                s.train.lr_decay = 0.5f64.powf(1.0 / 200.0);
            }
        }
        s
    }

    /// The resolved spec as TOML, written beside every run's results.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("spec serializes")
    }

    /// Input width of the first recurrent layer for a vocabulary of `vocab` symbols.
    pub fn input_size(&self, vocab: usize) -> usize {
        self.model_config(vocab).input.width()
    }

    /// This spec with `train.gemm_precision` set.
    pub fn with_precision(mut self, p: GemmPrecision) -> Spec {
        self.train.gemm_precision = p;
        self
    }

    /// What the spec asks of this machine beyond what any CPU has: bf16 products need AMX-BF16,
    /// or AVX512-BF16 on an AMD CPU (`tensor::bf16_products`; checked where a run trains, not
    /// where a spec is read, so that results made elsewhere still load for tables and plots).
    pub fn check_host(&self, origin: &str) -> crate::error::Result<()> {
        if self.train.gemm_precision == GemmPrecision::Bf16
            && let Err(why) = crate::tensor::bf16_products()
        {
            crate::bail!(
                "{origin}: `train.gemm_precision` = \"bf16\" runs the recurrent products on AMX-BF16 (Intel) or AVX512-BF16 (AMD), and {why}; allowed on this machine: \"f32\""
            );
        }
        Ok(())
    }

    /// The model this spec describes, for a vocabulary of `vocab` symbols (ignored for MNIST).
    pub fn model_config(&self, vocab: usize) -> ModelConfig {
        let m = &self.model;
        let mnist = self.task.is_mnist();
        ModelConfig {
            cell: m.cell,
            input: if mnist {
                InputKind::Pixels
            } else if self.task.uses_embedding() {
                InputKind::Embedding { vocab, dim: m.embedding }
            } else {
                InputKind::OneHot { vocab }
            },
            head: if mnist { Head::LastStep } else { Head::EveryStep },
            outputs: if mnist { 10 } else { vocab },
            hidden: m.hidden,
            layers: m.layers,
            quantizer: m.quantizer,
            normalization: m.normalization,
            quantize_first_input: !mnist,
            batch_slots: self.train.bptt,
            dropout_input: m.dropout_input,
            dropout_between: m.dropout_between,
            dropout_output: m.dropout_output,
            init: if mnist { Init::SeqMnist } else { Init::LanguageModel },
            gemm_precision: self.train.gemm_precision,
        }
    }
}
