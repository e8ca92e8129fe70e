//! `qlstm table`: the runs below some directories laid out as one of the paper's tables.

use std::path::{Path, PathBuf};

use crate::error::Result;

pub fn table(roots: &[PathBuf], layout: &str, out: Option<&Path>, markdown: bool) -> Result<()> {
    let text = crate::report::table::table(roots, layout, markdown)?;
    match out {
        Some(p) => {
            if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| crate::error::io_err(parent, e))?;
            }
            crate::io::write_atomic(p, text.as_bytes())
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
