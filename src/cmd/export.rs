//! `qlstm export RUN_DIR`: the packed 1- and 2-bit model file, and its bytes by part beside the
//! size the tables count (docs/SPEC.md §4).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::bail;
use crate::error::Result;
use crate::export::packed;
use crate::io::checkpoint;
use crate::run_dir::RunDir;

/// Which of a run's models to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// best.safetensors: the model at the best validation loss.
    Best,
    /// checkpoint.safetensors: the last one written.
    Last,
}

/// What to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Packed,
    Torch,
}

pub fn export(run: &Path, out: Option<&Path>, which: Which, format: Format) -> Result<()> {
    let dir = RunDir::at(run);
    let file = match which {
        Which::Best => dir.best(),
        Which::Last => dir.checkpoint(),
    };
    if !file.exists() {
        bail!("{}: no {} here; is it a run directory?", run.display(), file.file_name().unwrap().to_string_lossy());
    }
    let default = if format == Format::Torch { "torch.safetensors" } else { "packed.safetensors" };
    let out: PathBuf = out.map_or_else(|| dir.file(default), Path::to_path_buf);
    let (spec, mut model) = packed::load_checkpoint_model(&file, &[])?;
    if format == Format::Torch {
        let names = crate::export::torch::export(&spec, &model, &out)?;
        println!("wrote {} ({} tensors: {}) from {}", out.display(), names.len(), names.join(", "), file.display());
        return Ok(());
    }
    let ck_meta = checkpoint::read_meta(&file)?;
    let mut meta = HashMap::new();
    for k in ["step", "epoch"] {
        if let Some(v) = ck_meta.get(k) {
            meta.insert(k.to_string(), v.clone());
        }
    }
    meta.insert("source".into(), file.display().to_string());
    if let Some(v) = packed::vocabulary(&spec) {
        meta.insert("vocabulary".into(), v);
    }
    let report = packed::export(&spec, &mut model, &out, meta)?;
    println!("wrote {} ({} bytes) from {}", out.display(), report.file_bytes, file.display());
    for (part, bytes) in &report.parts {
        println!("  {part:<24} {bytes:>12} bytes  {:>10.1} KB", *bytes as f64 / 1024.0);
    }
    // The tables count weights at their bits, biases and normalization parameters (weight
    // norm's gains among them: here they are folded into the row scales).
    let counted: usize = ["recurrent weights", "biases", "normalization", "scales (α, row scales)"]
        .iter()
        .map(|p| report.bytes(p))
        .sum();
    let spec_bytes: f64 =
        crate::size::breakdown(&spec, model.decoder.weight.value.nrows()).iter().map(|p| p.bytes()).sum();
    println!(
        "  the recurrent layers (weights, biases, normalization, scales): {counted} bytes = {:.1} KB, against {spec_bytes} bytes = {:.1} KB by docs/SPEC.md §4 (the size column); {:+} bytes: the α scales ({} bytes) the tables leave out and rows padded to whole bytes",
        counted as f64 / 1024.0,
        spec_bytes / 1024.0,
        counted as f64 - spec_bytes,
        report.alpha_bytes,
    );
    if report.zeros_as_plus > 0 {
        println!("  {} exactly-zero latent weights of 1-bit matrices stored as +1", report.zeros_as_plus);
    }
    Ok(())
}
