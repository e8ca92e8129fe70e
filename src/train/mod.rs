//! Training: the optimizer, the learning-rate schedules, and the epoch loop with evaluation.

pub mod optimizer;
pub mod trainer;

pub use optimizer::{Optimizer, clip_grad_norm};
pub use trainer::{RunOutcome, Trainer};
