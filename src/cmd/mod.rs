//! The subcommands of the `qlstm` binary. This is the only code that prints, shows progress or
//! spawns processes; everything below it returns values and errors.

pub mod bench;
pub mod bench_inference;
pub mod eval;
pub mod export;
pub mod plot;
pub mod progress;
pub mod run;
pub mod sample;
pub mod size;
pub mod sweep;
pub mod table;

use std::process::ExitCode;

use serde::Serialize;

use crate::error::{Error, Result};

/// Exit status of a run that diverged (a result, but not a success).
pub const DIVERGED_EXIT: u8 = 3;

/// Exit status of an interrupted run (128 + SIGINT, as shells report it).
pub fn interrupted_exit() -> ExitCode {
    ExitCode::from(crate::signal::INTERRUPTED_EXIT as u8)
}

/// Rows as CSV on stdout, header first.
pub fn print_csv<R: Serialize + Default>(rows: &[R]) -> Result<()> {
    print_csv_rows(rows, true)
}

/// Rows as CSV on stdout, with the header line or without it (a later part of one table).
pub fn print_csv_rows<R: Serialize + Default>(rows: &[R], header: bool) -> Result<()> {
    use std::io::Write;
    let bytes = crate::io::csv_bytes(rows)?;
    let start = if header { 0 } else { bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| i + 1) };
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes[start..]).and_then(|_| out.flush()).map_err(|e| Error::new(format!("stdout: {e}")))
}

/// Set the GEMM threads: `n`, or every core.
pub fn set_threads(n: Option<usize>) {
    let n = n.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    crate::tensor::set_threads(n);
}
