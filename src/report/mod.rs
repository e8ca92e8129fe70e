//! Everything that leaves the process as a file: atomic writes and the CSV layouts.

pub mod csv;

pub use csv::{EpochRow, Summary, write_atomic};

pub mod size;
pub use size::size_report;
pub mod eval;
pub mod plot;
pub mod table;
