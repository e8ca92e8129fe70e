//! Sweeps: expanding specs × grids into jobs (`jobs`), what they cost (`cost`), the Slurm script
//! for a cluster (`slurm`), and where a sweep stands (`status`). Running them locally, and
//! printing, is `cmd::sweep`.

pub mod cost;
pub mod jobs;
pub mod slurm;
pub mod status;

pub use jobs::{Job, command_line, expand, is_complete, parse_grid, run_args, spec_files};
