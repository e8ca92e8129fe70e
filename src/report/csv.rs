//! The run's CSV files. Every file is written whole to a temporary name in the same directory
//! and renamed into place, so a reader (or a crash) never sees half a file.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result, io_err};

/// Write `bytes` to `path` atomically (temp file + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp-{}", path.file_name().unwrap().to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// Serialize rows (with a header) to CSV bytes.
pub fn to_csv<R: Serialize>(rows: &[R]) -> Result<Vec<u8>> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(|e| Error::new(format!("csv: {e}")))?;
    }
    w.into_inner().map_err(|e| Error::new(format!("csv: {e}")))
}

/// The first data row of a CSV file (a run's summary.csv) as column → value; None if the file
/// is missing or has no row. Read by column name, so it tolerates added columns.
pub fn read_first_row(path: &Path) -> Result<Option<std::collections::HashMap<String, String>>> {
    if !path.exists() {
        return Ok(None);
    }
    let err = |e: ::csv::Error| Error::new(format!("{}: {e}", path.display()));
    let mut r = ::csv::Reader::from_path(path).map_err(err)?;
    let h = r.headers().map_err(err)?.clone();
    match r.records().next() {
        Some(rec) => {
            Ok(Some(h.iter().zip(rec.map_err(err)?.iter()).map(|(k, v)| (k.to_string(), v.to_string())).collect()))
        }
        None => Ok(None),
    }
}

/// One row of metrics.csv: an epoch (or the partial epoch a step budget ended in).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct EpochRow {
    pub epoch: usize,
    pub step: u64,
    /// lr of the latent LSTM weights during this epoch (the one the schedules move).
    pub lr: f64,
    pub train_loss: f64,
    pub valid_loss: f64,
    pub valid_metric: f64,
    pub test_loss: f64,
    pub test_metric: f64,
    pub tokens_per_s: f64,
    pub wall_s: f64,
}

/// The one row of summary.csv.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    pub name: String,
    pub task: String,
    pub layers: usize,
    pub hidden: usize,
    pub quantizer: String,
    pub normalization: String,
    pub epochs_run: usize,
    pub steps: u64,
    pub best_epoch: usize,
    /// bpc | ppl | error_pct
    pub metric: String,
    pub valid_metric: f64,
    pub test_metric: f64,
    pub test_loss_nats: f64,
    pub size_kb: u64,
    pub train_tokens_per_s: f64,
    pub wall_s: f64,
    /// ok | diverged | interrupted
    pub status: String,
    /// The optimizer step at which a diverged run stopped.
    pub diverged_step: Option<u64>,
}
