//! `qlstm plot`: the diagnostic figures (or, with --curves, the learning curves) of some run
//! directories, into a file.

use std::path::{Path, PathBuf};

use crate::error::Result;

pub fn plot(runs: &[PathBuf], out: &Path, grad_step: Option<u64>, curves: bool) -> Result<()> {
    if curves {
        crate::report::plot::curves(runs, out)?;
    } else {
        crate::report::plot::plot(runs, out, grad_step)?;
    }
    println!("wrote {}", out.display());
    Ok(())
}
