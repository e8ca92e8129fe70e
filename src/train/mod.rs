//! Training: the epoch loop (`trainer`), one optimizer step (`step`), the optimizer
//! (`optimizer`), the learning-rate schedules (`schedule`), what a checkpoint holds (`resume`),
//! and what a run reports as it goes (`observer`).

pub mod observer;
pub mod optimizer;
pub mod resume;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use observer::{Divergence, Observer, Silent};
pub use optimizer::{Clip, Optimizer, clip_grad_norm};
pub use trainer::{EpochEnd, RunOutcome, Split, Trainer};
