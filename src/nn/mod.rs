//! Layers, each a forward/backward pair with an explicit cache owned by the caller, and the
//! vocabulary they are configured with (quantizers, normalizations).

pub mod dropout;
pub mod embedding;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod packed;
pub mod quant;
pub mod recurrent;
pub mod weight_norm;

pub use embedding::Embedding;
pub use linear::Linear;
pub use loss::{Stats, softmax_cross_entropy};
pub use norm::Normalization;
pub use quant::Quantizer;
pub use recurrent::{Cache, CellKind, Grads, Layer, LayerInput, OutputGrad};
