//! Helpers shared by the integration tests (each test binary uses some of them).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The crate root: configs/, data/, results/reference/.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The qlstm binary built for these tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qlstm"))
}

/// A fresh, empty scratch directory for one test (per test process).
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qlstm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `--set` value pointing runs at the fetched data, wherever the test runs from.
pub fn data_set() -> String {
    format!("data.dir={}", root().join("data").display())
}
