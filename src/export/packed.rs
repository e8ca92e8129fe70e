//! The packed model: a safetensors file whose quantized blocks are bit planes (1 bit per weight
//! for bc/bwn/lab, 2 for tc/twn/lat), written from a run's checkpoint and loaded back as a
//! model whose layers multiply by the bits directly (`nn::packed`).
//!
//! What the file holds (names as the checkpoint's, `{cell}.{layer}.…`):
//!   {p}.w_x.sign, {p}.w_h.sign        U8 (G·H, ⌈in/8⌉): bit set ⇔ the weight is +1
//!   {p}.w_x.nonzero, {p}.w_h.nonzero  U8, 2-bit quantizers only: bit set ⇔ the weight is not 0
//!   {p}.w_x.alpha, {p}.w_h.alpha      F32 (1, G): each gate block's α (bwn, lab, twn, lat)
//!   {p}.w_x.row_scale, {p}.w_h.row_scale  F32 (1, G·H): weight norm folded in, g_j/(‖Q(W)_j‖ + 1e-8)
//!   {p}.w_x                           F32 (G·H, in) instead, for a matrix kept at full precision
//!                                     (quantizer fp; sequential MNIST's W_x), weight norm folded in
//!   biases, layer/batch-norm γ, β and running statistics, embedding, decoder, h0/c0: F32 as in
//!   the checkpoint.
//! Row j of a packed matrix is W[j, i] = c_j · b_ji with c_j = α_k(j) · row_scale_j (whichever
//! are there; 1 if neither), b = +1 if sign, else −1 if nonzero (or binary), else 0. Rows are in
//! PyTorch's layout (out, in), gate blocks stacked along rows (LSTM i, f, a, o; GRU r, z, n), a
//! row's bits padded to whole bytes, column i in bit (i mod 8) of byte ⌊i/8⌋, least significant
//! bit first. A 1-bit quantizer's exactly-zero latent weight (docs/SPEC.md §2) is stored as +1.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, ArrayView2, s};
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

use crate::bail;
use crate::data::TaskData;
use crate::error::{Error, Result};
use crate::io::checkpoint;
use crate::model::Model;
use crate::nn::packed::PackedMatrix;
use crate::nn::recurrent::{Frozen, FrozenMatrix};
use crate::nn::{Cache, Layer, Quantizer, weight_norm};
use crate::spec::Spec;
use crate::train::resume;

pub const FORMAT: &str = "qlstm-packed-1";

/// The packing, in the file's metadata (`packing`) for a reader with no other documentation.
pub const PACKING: &str = "Quantized matrices {p}.w_x / {p}.w_h (PyTorch layout (out = G·H, in), gate blocks stacked along rows) are bit planes: {p}.w_*.sign U8 (G·H, ceil(in/8)), bit set = weight +1; {p}.w_*.nonzero (2-bit quantizers only), bit set = weight nonzero; column i is bit (i mod 8) of byte floor(i/8) of its row, least significant bit first, rows padded to whole bytes. W[j,i] = c_j * b_ji with b = +1 if sign, else -1 if nonzero or binary, else 0, and c_j = alpha[block of j] * row_scale[j] (each factor 1 when its tensor is absent): {p}.w_*.alpha F32 (1, G) per gate block, {p}.w_*.row_scale F32 (1, G·H) weight normalization folded in. A full-precision matrix is F32 {p}.w_* (G·H, in), weight normalization folded in. Everything else is F32 as in a qlstm checkpoint.";

/// Bytes of a packed file by part.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedReport {
    /// (part, bytes) in the order printed.
    pub parts: Vec<(&'static str, usize)>,
    pub file_bytes: usize,
    /// Exactly-zero latent weights of 1-bit matrices, stored as +1.
    pub zeros_as_plus: usize,
    /// Bytes of the quantizers' α scales (in "scales"; the tables do not count them).
    pub alpha_bytes: usize,
}

impl PackedReport {
    fn add(&mut self, part: &'static str, bytes: usize) {
        match self.parts.iter_mut().find(|(p, _)| *p == part) {
            Some((_, b)) => *b += bytes,
            None => self.parts.push((part, bytes)),
        }
    }

    pub fn bytes(&self, part: &str) -> usize {
        self.parts.iter().find(|(p, _)| *p == part).map_or(0, |(_, b)| *b)
    }
}

/// The model of a checkpoint (`best.safetensors` or `checkpoint.safetensors`), with its spec.
pub fn load_checkpoint_model(file: &Path, sets: &[String]) -> Result<(Spec, Model<f32>)> {
    let mut ck = checkpoint::read(file)?;
    let spec = Spec::from_toml_str(ck.meta("spec")?, &ck.path, None, sets)?;
    let vocab = outputs_of(&ck.tensors, &spec, &ck.path)?;
    let mut model = Model::new(&spec.model_config(vocab), &mut Pcg64Mcg::seed_from_u64(0));
    resume::load_model(&mut ck, &spec, &mut model)?;
    Ok((spec, model))
}

/// The softmax width the file's decoder has (the vocabulary: no data needed).
fn outputs_of(tensors: &HashMap<String, Array2<f32>>, spec: &Spec, path: &str) -> Result<usize> {
    let _ = spec; // (sequential MNIST's width is fixed by its config; the decoder says it anyway)
    match tensors.get("decoder.weight") {
        Some(w) => Ok(w.nrows()),
        None => bail!("{path}: lacks tensor `decoder.weight`"),
    }
}

/// Write the packed form of `model` (trained under `spec`) to `out`.
pub fn export(spec: &Spec, model: &mut Model<f32>, out: &Path, meta: HashMap<String, String>) -> Result<PackedReport> {
    let mut report = PackedReport::default();
    let mut floats: Vec<(String, Array2<f32>)> = Vec::new();
    let mut planes: Vec<(String, (usize, usize), Vec<u8>)> = Vec::new();
    let latent: Vec<String> = model.layers.iter().flat_map(|l| [l.w_x.name.clone(), l.w_h.name.clone()]).collect();
    let gains: Vec<String> =
        model.layers.iter().flat_map(|l| [&l.wn_gain_x, &l.wn_gain_h]).flatten().map(|g| g.name.clone()).collect();
    for layer in &model.layers {
        let mut cache = Cache::default();
        layer.prepare_weights(&mut cache);
        let quantize_x = layer.quantize_input && layer.quantizer != Quantizer::Fp;
        let x = (
            quantize_x,
            &layer.w_x.name,
            cache.quantized_input_t().reversed_axes(),
            cache.input_weights_t().reversed_axes(),
            &layer.wn_gain_x,
        );
        let h = (
            layer.quantizer != Quantizer::Fp,
            &layer.w_h.name,
            cache.quantized_recurrent_t().reversed_axes(),
            cache.recurrent_weights_t().reversed_axes(),
            &layer.wn_gain_h,
        );
        for (quantized, name, q, eff, gain) in [x, h] {
            if !quantized {
                report.add("recurrent weights", eff.len() * 4);
                floats.push((name.clone(), eff.as_standard_layout().to_owned()));
                continue;
            }
            let m = pack(layer, q, eff, gain.as_ref().map(|g| g.value.view()), name, &mut floats, &mut report)?;
            report.add("recurrent weights", m.sign.len() + m.nonzero.as_ref().map_or(0, Vec::len));
            planes.push((format!("{name}.sign"), (m.rows, m.row_bytes), m.sign));
            if let Some(nz) = m.nonzero {
                planes.push((format!("{name}.nonzero"), (m.rows, m.row_bytes), nz));
            }
        }
    }
    for (name, t) in model.named_tensors_mut() {
        if latent.contains(&name) || gains.contains(&name) {
            continue;
        }
        let part = if name.starts_with("decoder.") {
            "softmax layer"
        } else if name.starts_with("embedding.") {
            "embedding"
        } else if name.contains(".norm_") {
            "normalization"
        } else if name.contains(".bias") {
            "biases"
        } else {
            "initial state"
        };
        report.add(part, t.len() * 4);
        floats.push((name, t.clone()));
    }
    let mut meta = meta;
    meta.insert("spec".into(), spec.to_toml());
    meta.insert("packing".into(), PACKING.into());
    meta.insert("zeros_as_plus".into(), report.zeros_as_plus.to_string());
    let views: Vec<(String, ArrayView2<f32>)> = floats.iter().map(|(n, a)| (n.clone(), a.view())).collect();
    checkpoint::write_with(out, FORMAT, &views, &planes, meta)?;
    report.file_bytes = std::fs::metadata(out).map_err(|e| crate::error::io_err(out, e))?.len() as usize;
    let counted: usize = report.parts.iter().map(|(_, b)| b).sum();
    report.add("header and metadata", report.file_bytes.saturating_sub(counted));
    Ok(report)
}

/// One quantized matrix: codes from Q(W), its block scales α and weight norm's row scales
/// (written to `floats`), checked to reproduce the effective weights the forward pass used.
fn pack(
    layer: &Layer<f32>,
    q: ArrayView2<f32>,
    eff: ArrayView2<f32>,
    gain: Option<ArrayView2<f32>>,
    name: &str,
    floats: &mut Vec<(String, Array2<f32>)>,
    report: &mut PackedReport,
) -> Result<PackedMatrix> {
    let (rows, cols) = q.dim();
    let (blocks, hidden) = (layer.gates(), layer.hidden);
    let ternary = layer.quantizer.bits() == 2;
    let scaled = matches!(layer.quantizer, Quantizer::Bwn | Quantizer::Lab | Quantizer::Twn | Quantizer::Lat);
    let codes: Vec<i8> = q.iter().map(|&v| (v > 0.0) as i8 - (v < 0.0) as i8).collect();
    // α of each block: the magnitude every nonzero entry of Q(W)'s block has
    let alpha: Vec<f32> = (0..blocks)
        .map(|k| q.slice(s![k * hidden..(k + 1) * hidden, ..]).iter().fold(0.0f32, |m, v| m.max(v.abs())))
        .collect();
    // weight norm's g_j / (‖Q(W)_j‖ + 1e-8), as weight_norm::forward computes it
    let row_scale: Option<Vec<f32>> = gain.map(|g| {
        let norms = weight_norm::row_norms(q);
        norms.iter().zip(g.row(0)).map(|(&n, &g)| g / (n + 1e-8)).collect()
    });
    let scale: Vec<f32> = (0..rows)
        .map(|j| {
            let a = if scaled { alpha[j / hidden] } else { 1.0 };
            row_scale.as_ref().map_or(a, |r| if scaled { a * r[j] } else { r[j] })
        })
        .collect();
    for j in 0..rows {
        for i in 0..cols {
            let want = eff[[j, i]];
            let got = codes[j * cols + i] as f32 * scale[j];
            // a binary matrix's exact zero is stored as +1 (counted), not checked
            if (ternary || codes[j * cols + i] != 0) && got != want {
                bail!("{name}[{j},{i}]: packing gives {got}, the forward pass used {want}");
            }
        }
    }
    if scaled {
        report.add("scales (α, row scales)", blocks * 4);
        report.alpha_bytes += blocks * 4;
        floats.push((format!("{name}.alpha"), Array2::from_shape_vec((1, blocks), alpha).unwrap()));
    }
    if let Some(r) = row_scale {
        report.add("scales (α, row scales)", r.len() * 4);
        floats.push((format!("{name}.row_scale"), Array2::from_shape_vec((1, rows), r).unwrap()));
    }
    let (m, zeros) = PackedMatrix::pack(&codes, rows, cols, scale, ternary);
    report.zeros_as_plus += zeros;
    Ok(m)
}

/// A packed file back as a model (evaluation only) with its spec, with `--set`s on the spec.
pub fn load(path: &Path, sets: &[String]) -> Result<(Spec, Model<f32>)> {
    let mut f = checkpoint::read_with(path, &[FORMAT], "a packed qlstm model (qlstm export)")?;
    let spec = Spec::from_toml_str(f.meta("spec")?, &f.path, None, sets)?;
    let vocab = outputs_of(&f.tensors, &spec, &f.path)?;
    let mut model = Model::new(&spec.model_config(vocab), &mut Pcg64Mcg::seed_from_u64(0));
    let mut frozen = Vec::new();
    for layer in &model.layers {
        let mut matrix = |name: &str, cols: usize| -> Result<FrozenMatrix> {
            let rows = layer.gates() * layer.hidden;
            if let Some(w) = f.tensors.remove(name) {
                if w.dim() != (rows, cols) {
                    bail!("{}: `{name}` is {:?}, the model needs {:?}", f.path, w.dim(), (rows, cols));
                }
                return Ok(FrozenMatrix::Dense(w.t().as_standard_layout().to_owned()));
            }
            let row_bytes = cols.div_ceil(8);
            let mut plane = |suffix: &str| -> Result<Option<Vec<u8>>> {
                match f.bytes.remove(&format!("{name}.{suffix}")) {
                    Some((shape, b)) if shape == (rows, row_bytes) => Ok(Some(b)),
                    Some((shape, _)) => {
                        bail!("{}: `{name}.{suffix}` is {shape:?}, expected {:?}", f.path, (rows, row_bytes))
                    }
                    None => Ok(None),
                }
            };
            let sign =
                plane("sign")?.ok_or_else(|| Error::new(format!("{}: lacks `{name}` or `{name}.sign`", f.path)))?;
            let nonzero = plane("nonzero")?;
            let alpha = f.tensors.remove(&format!("{name}.alpha"));
            let row_scale = f.tensors.remove(&format!("{name}.row_scale"));
            let scale = (0..rows)
                .map(|j| {
                    let a = alpha.as_ref().map(|a| a[[0, j / layer.hidden]]);
                    let r = row_scale.as_ref().map(|r| r[[0, j]]);
                    match (a, r) {
                        (Some(a), Some(r)) => a * r,
                        (Some(a), None) => a,
                        (None, Some(r)) => r,
                        (None, None) => 1.0,
                    }
                })
                .collect();
            Ok(FrozenMatrix::Packed(PackedMatrix { rows, cols, row_bytes, sign, nonzero, scale }))
        };
        let x = matrix(&layer.w_x.name, layer.input_size)?;
        let h = matrix(&layer.w_h.name, layer.hidden)?;
        frozen.push(Frozen { x, h });
    }
    let latent: Vec<String> = model.layers.iter().flat_map(|l| [l.w_x.name.clone(), l.w_h.name.clone()]).collect();
    let gains: Vec<String> =
        model.layers.iter().flat_map(|l| [&l.wn_gain_x, &l.wn_gain_h]).flatten().map(|g| g.name.clone()).collect();
    for (name, slot) in model.named_tensors_mut() {
        if latent.contains(&name) || gains.contains(&name) {
            continue;
        }
        let t = f.take(&name, slot.dim())?;
        slot.assign(&t);
    }
    for (layer, fz) in model.layers.iter_mut().zip(frozen) {
        layer.frozen = Some(fz);
    }
    Ok((spec, model))
}

/// The vocabulary of the task's data, in the metadata for `qlstm sample` (JSON list of the
/// symbols), if the data is there.
pub fn vocabulary(spec: &Spec) -> Option<String> {
    match TaskData::load(spec).ok()? {
        TaskData::Lm(c) => serde_json::to_string(&c.symbols).ok(),
        TaskData::Mnist(..) => None,
    }
}
