//! qlstm: quantized LSTMs trained on CPU, reproducing Hou et al., "Normalization Helps
//! Training of Quantized LSTM" (NeurIPS 2019). See README.md and docs/SPEC.md.
//!
//! The crate reads top to bottom: `cmd` (the subcommands: the only code that prints) → `report`
//! (tables and figures from run directories) → `train` (the epoch loop, checkpoints) →
//! `run_dir` (what a run directory holds) → `io` (atomic files, CSV, safetensors) → `diag`,
//! `size`, `data` → `spec` (the TOML spec) → `model` → `nn` (layers and the recurrent cell) →
//! `tensor` (scalars, SIMD, GEMM, parameters).

pub mod cmd;
pub mod data;
pub mod diag;
pub mod error;
pub mod export;
pub mod io;
pub mod model;
mod names;
pub mod nn;
pub mod report;
pub mod run_dir;
pub mod signal;
pub mod size;
pub mod spec;
pub mod sweep;
pub mod tensor;
pub mod train;
