//! Every file qlstm writes is written whole to a temporary name in the same directory and
//! renamed into place, so a reader (or a crash) never sees half a file; every CSV goes through
//! one writer over serde rows, header first, even when there are no rows yet.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// Rows as CSV bytes with a header. The header comes from the row type's fields, so a table
/// with no rows yet still has one (serde names the fields only when serializing a value: a
/// default row is serialized and only its header kept).
pub fn csv_bytes<R: Serialize + Default>(rows: &[R]) -> Result<Vec<u8>> {
    let err = |e: ::csv::Error| Error::new(format!("csv: {e}"));
    let mut w = ::csv::Writer::from_writer(Vec::new());
    if rows.is_empty() {
        let mut probe = ::csv::Writer::from_writer(Vec::new());
        probe.serialize(R::default()).map_err(err)?;
        let text = probe.into_inner().map_err(|e| Error::new(format!("csv: {e}")))?;
        let header = text.split(|&b| b == b'\n').next().unwrap_or_default();
        return Ok([header, b"\n"].concat());
    }
    for r in rows {
        w.serialize(r).map_err(err)?;
    }
    w.into_inner().map_err(|e| Error::new(format!("csv: {e}")))
}

/// Write rows to `path` as CSV, atomically.
pub fn write_csv<R: Serialize + Default>(path: &Path, rows: &[R]) -> Result<()> {
    write_atomic(path, &csv_bytes(rows)?)
}

/// Rows of CSV text, by column name (extra columns are ignored); `origin` names the source in
/// messages.
pub fn read_csv<R: DeserializeOwned>(text: &[u8], origin: &str) -> Result<Vec<R>> {
    let mut r = ::csv::Reader::from_reader(text);
    r.deserialize().collect::<std::result::Result<Vec<R>, _>>().map_err(|e| Error::new(format!("{origin}: {e}")))
}

/// Rows of a CSV file; none if the file does not exist.
pub fn read_csv_file<R: DeserializeOwned>(path: &Path) -> Result<Vec<R>> {
    match std::fs::read(path) {
        Ok(bytes) => read_csv(&bytes, &path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Default, Debug, PartialEq)]
    struct Row {
        step: u64,
        name: String,
        value: Option<f64>,
    }

    #[test]
    fn header_even_without_rows_and_a_round_trip() {
        assert_eq!(csv_bytes::<Row>(&[]).unwrap(), b"step,name,value\n");
        let rows =
            vec![Row { step: 3, name: "a,b".into(), value: None }, Row { step: 4, name: "c".into(), value: Some(0.1) }];
        let bytes = csv_bytes(&rows).unwrap();
        assert_eq!(read_csv::<Row>(&bytes, "t").unwrap(), rows);
    }
}
