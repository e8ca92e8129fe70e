//! Files: atomic writes and the one CSV writer and reader (`fs`), safetensors checkpoints
//! (`checkpoint`).

pub mod checkpoint;
pub mod fs;

pub use fs::{csv_bytes, read_csv, read_csv_file, write_atomic, write_csv};
