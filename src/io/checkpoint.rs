//! Checkpoints in safetensors format: every tensor as a 2-D little-endian f32 array (vectors
//! are 1×n), named as the parameters are (`lstm.0.w_x` …), plus string metadata. Written
//! atomically, so a crash leaves the previous checkpoint intact.
//!
//! What a training checkpoint holds is `train::resume`'s business.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, ArrayView2};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::bail;
use crate::error::{Error, Result, io_err};
use crate::io::fs::write_atomic;

/// Written into every file; `read` accepts this and the formats before it.
pub const FORMAT: &str = "qlstm-checkpoint-2";
const READABLE: [&str; 2] = ["qlstm-checkpoint-1", FORMAT];

/// Write tensors and metadata to `path` (atomically).
pub fn write(path: &Path, tensors: &[(String, ArrayView2<f32>)], meta: HashMap<String, String>) -> Result<()> {
    write_with(path, FORMAT, tensors, &[], meta)
}

/// Write f32 tensors and U8 tensors (`(name, (rows, cols), bytes)`) under a format name.
pub fn write_with(
    path: &Path,
    format: &str,
    tensors: &[(String, ArrayView2<f32>)],
    bytes_tensors: &[(String, (usize, usize), Vec<u8>)],
    mut meta: HashMap<String, String>,
) -> Result<()> {
    meta.insert("format".into(), format.into());
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, a)| a.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let err =
        |name: &str, e: safetensors::SafeTensorError| Error::new(format!("{}: tensor {name}: {e}", path.display()));
    let mut views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, a), b)| {
            TensorView::new(Dtype::F32, vec![a.nrows(), a.ncols()], b)
                .map(|v| (name.clone(), v))
                .map_err(|e| err(name, e))
        })
        .collect::<Result<Vec<_>>>()?;
    for (name, (r, c), b) in bytes_tensors {
        views.push((name.clone(), TensorView::new(Dtype::U8, vec![*r, *c], b).map_err(|e| err(name, e))?));
    }
    let blob = safetensors::serialize(views, Some(meta)).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    write_atomic(path, &blob)
}

/// A checkpoint read back: tensors by name and the metadata.
pub struct Loaded {
    pub path: String,
    pub tensors: HashMap<String, Array2<f32>>,
    /// U8 tensors (a packed export's bit planes): shape and bytes.
    pub bytes: HashMap<String, ((usize, usize), Vec<u8>)>,
    pub meta: HashMap<String, String>,
}

impl Loaded {
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::new(format!("{}: metadata lacks `{key}`", self.path)))
    }

    pub fn parse<V: std::str::FromStr>(&self, key: &str) -> Result<V> {
        let raw = self.meta(key)?;
        raw.parse().map_err(|_| Error::new(format!("{}: metadata `{key}` = {raw:?} is not valid", self.path)))
    }

    /// Take a tensor that must exist with the given shape.
    pub fn take(&mut self, name: &str, shape: (usize, usize)) -> Result<Array2<f32>> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| Error::new(format!("{}: lacks tensor `{name}` (written for another spec?)", self.path)))?;
        if t.dim() != shape {
            bail!("{}: tensor `{name}` has shape {:?}, the model needs {:?}", self.path, t.dim(), shape);
        }
        Ok(t)
    }
}

/// The metadata of a checkpoint alone, from its header (the tensors are not read).
pub fn read_meta(path: &Path) -> Result<HashMap<String, String>> {
    read_meta_of(path, &READABLE)
}

/// The metadata of a file of one of `formats`, from its header alone.
pub fn read_meta_of(path: &Path, formats: &[&str]) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let p = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| io_err(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        bail!("{p}: not a readable safetensors file (a header of {n} bytes)");
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| io_err(path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::new(format!("{p}: not a readable safetensors file ({e})")))?;
    let meta: HashMap<String, String> = json
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    if !meta.get("format").is_some_and(|f| formats.contains(&f.as_str())) {
        bail!("{p}: not a qlstm file of format {} (metadata `format`)", formats.join(" or "));
    }
    Ok(meta)
}

pub fn read(path: &Path) -> Result<Loaded> {
    read_with(path, &READABLE, "a qlstm checkpoint")
}

/// Read a file of one of `formats` (`what` names them in the message).
pub fn read_with(path: &Path, formats: &[&str], what: &str) -> Result<Loaded> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::new(format!("{p}: not a readable safetensors file ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::new(format!("{p}: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if !meta.get("format").is_some_and(|f| formats.contains(&f.as_str())) {
        bail!("{p}: not {what} (metadata `format` is not {})", formats.join(" or "));
    }
    let mut tensors = HashMap::new();
    let mut bytes = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() == Dtype::U8 && view.shape().len() == 2 {
            bytes.insert(name, ((view.shape()[0], view.shape()[1]), view.data().to_vec()));
            continue;
        }
        if view.dtype() != Dtype::F32 || view.shape().len() != 2 {
            bail!(
                "{p}: tensor `{name}` is {:?} {:?}; qlstm writes 2-D f32 (and U8 bit planes)",
                view.dtype(),
                view.shape()
            );
        }
        let data: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let a = Array2::from_shape_vec((view.shape()[0], view.shape()[1]), data)
            .map_err(|e| Error::new(format!("{p}: {e}")))?;
        tensors.insert(name, a);
    }
    Ok(Loaded { path: p, tensors, bytes, meta })
}
