//! qlstm: quantized LSTMs trained on CPU, reproducing Hou et al., "Normalization Helps
//! Training of Quantized LSTM" (NeurIPS 2019). See README.md and ../shared/SPEC.md.

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod diag;
pub mod error;
pub mod model;
pub mod nn;
pub mod report;
pub mod signal;
pub mod size;
pub mod spec;
pub mod sweep;
pub mod tensor;
pub mod train;
