//! A run's model as a PyTorch state dict: the effective weights the forward pass uses — Q(W)
//! with weight normalization folded in — under `torch.nn.LSTM` / `nn.GRU` names, with
//! `nn.Embedding` and the `nn.Linear` decoder, so that a module with attributes `rnn`,
//! `decoder` (and `embedding`) loads it with `load_state_dict(strict=True)`.
//!
//! Gate order maps as it is (LSTM i, f, a, o = PyTorch's i, f, g, o; GRU r, z, n). Biases: the
//! LSTM's one bias is `bias_ih`, with `bias_hh` = 0; the GRU's input-side bias is `bias_ih` and
//! `bias_hh` = [0, 0, b_hn]. Sequential MNIST's learned initial state goes to `h0` (and `c0`),
//! (layers, 1, H), outside the module (pass them as the initial state). Layer- and
//! batch-normalized cells have no nn.LSTM equivalent: scripts/qlstm_torch.py runs those from
//! the checkpoint itself.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array2, s};
use safetensors::{Dtype, tensor::TensorView};

use crate::bail;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::Model;
use crate::nn::{Cache, CellKind, Normalization};
use crate::spec::Spec;

pub const FORMAT: &str = "qlstm-torch-1";

/// Write the state dict; returns the tensor names written.
pub fn export(spec: &Spec, model: &Model<f32>, out: &Path) -> Result<Vec<String>> {
    if !matches!(spec.model.normalization, Normalization::None | Normalization::Weight) {
        bail!(
            "{}: normalization = {} has no torch.nn.{} equivalent; run the checkpoint with scripts/qlstm_torch.py instead (it implements every normalization)",
            spec.name,
            spec.model.normalization,
            if spec.model.cell == CellKind::Gru { "GRU" } else { "LSTM" }
        );
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let flat = |a: &Array2<f32>| a.iter().copied().collect::<Vec<f32>>();
    for (l, layer) in model.layers.iter().enumerate() {
        let mut cache = Cache::default();
        layer.prepare_weights(&mut cache);
        let wx = cache.input_weights_t().t().to_owned();
        let wh = cache.recurrent_weights_t().t().to_owned();
        tensors.push((format!("rnn.weight_ih_l{l}"), vec![wx.nrows(), wx.ncols()], flat(&wx)));
        tensors.push((format!("rnn.weight_hh_l{l}"), vec![wh.nrows(), wh.ncols()], flat(&wh)));
        let g = layer.gates() * layer.hidden;
        let b = layer.bias.value.row(0).to_vec();
        let mut b_hh = vec![0.0f32; g];
        if let Some(bn) = &layer.bias_hn {
            b_hh[2 * layer.hidden..].copy_from_slice(bn.value.as_slice().unwrap());
        }
        tensors.push((format!("rnn.bias_ih_l{l}"), vec![g], b));
        tensors.push((format!("rnn.bias_hh_l{l}"), vec![g], b_hh));
    }
    if let Some(e) = &model.embedding {
        let w = &e.weight.value;
        tensors.push(("embedding.weight".into(), vec![w.nrows(), w.ncols()], flat(w)));
    }
    let d = &model.decoder;
    tensors.push((
        "decoder.weight".into(),
        vec![d.weight.value.nrows(), d.weight.value.ncols()],
        flat(&d.weight.value),
    ));
    tensors.push(("decoder.bias".into(), vec![d.bias.value.ncols()], d.bias.value.row(0).to_vec()));
    let h = model.hidden;
    for (name, params) in [("h0", &model.init_h), ("c0", &model.init_c)] {
        if !params.is_empty() {
            let v: Vec<f32> = params.iter().flat_map(|p| p.value.slice(s![0, ..]).to_vec()).collect();
            tensors.push((name.into(), vec![params.len(), 1, h], v));
        }
    }
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::new(format!("{}: {n}: {e}", out.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    let input = model.layers[0].input_size;
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("spec".to_string(), spec.to_toml()),
        ("module".to_string(), module_line(spec, input, h, model.decoder.weight.value.nrows())),
    ]);
    let blob = safetensors::serialize(views, Some(meta)).map_err(|e| Error::new(format!("{}: {e}", out.display())))?;
    write_atomic(out, &blob)?;
    Ok(tensors.into_iter().map(|(n, _, _)| n).collect())
}

/// The PyTorch modules the state dict fits, as a line of Python.
fn module_line(spec: &Spec, input: usize, h: usize, outputs: usize) -> String {
    let cell = if spec.model.cell == CellKind::Gru { "GRU" } else { "LSTM" };
    let emb = if spec.task.uses_embedding() {
        format!("embedding = nn.Embedding({}, {}); ", outputs, spec.model.embedding)
    } else {
        String::new()
    };
    format!("{emb}rnn = nn.{cell}({input}, {h}, num_layers={}); decoder = nn.Linear({h}, {outputs})", spec.model.layers)
}
