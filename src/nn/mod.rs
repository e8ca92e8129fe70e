//! Layers, each a forward/backward pair with an explicit cache owned by the caller.

pub mod dropout;
pub mod embedding;
pub mod linear;
pub mod lstm;
pub mod norm;
pub mod quant;
pub mod weight_norm;

pub use embedding::Embedding;
pub use linear::{Linear, softmax_cross_entropy};
pub use lstm::{LayerInput, LstmCache, LstmGrads, LstmLayer};
