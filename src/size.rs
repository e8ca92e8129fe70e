//! Model-size accounting of the paper's tables (docs/SPEC.md §4), and the memory a run needs.
//! Only the recurrent layers count: weights at their bits (scales α not counted), the bias at
//! 32 bits, and the normalization parameters at 32 bits. Sequential MNIST keeps W_x at 32 bits.
//! KB = 1024 bytes, rounded half up.

use crate::bail;
use crate::error::Result;
use crate::spec::{CellKind, Normalization, Spec};

/// One line of the breakdown: `count` numbers stored at `bits` each.
#[derive(Clone, Debug, PartialEq)]
pub struct SizePart {
    pub layer: usize,
    pub part: &'static str,
    pub count: usize,
    pub bits: u32,
}

impl SizePart {
    pub fn bytes(&self) -> f64 {
        self.count as f64 * self.bits as f64 / 8.0
    }
}

/// Every part of every recurrent layer for a vocabulary of `vocab` symbols. With G gate
/// blocks (LSTM 4, GRU 3): weights G·H(r + H), biases G·H (the GRU adds b_hn: H more), and the
/// normalizers 2GH (weight), 4GH (layer), 8GH (shared batch), 4GH(T_max + 1) (separate batch):
/// docs/SPEC.md §4 for the LSTM, §6 for the GRU.
pub fn breakdown(spec: &Spec, vocab: usize) -> Vec<SizePart> {
    let m = &spec.model;
    let h = m.hidden;
    let blocks = m.cell.gates();
    let g = blocks * h;
    let bits = m.quantizer.bits();
    let mut parts = Vec::new();
    for l in 0..m.layers {
        let r = if l == 0 { spec.input_size(vocab) } else { h };
        let x_bits = if spec.task.is_mnist() && l == 0 { 32 } else { bits };
        parts.push(SizePart { layer: l, part: "w_x", count: g * r, bits: x_bits });
        parts.push(SizePart { layer: l, part: "w_h", count: g * h, bits });
        let rec_bias = if m.cell == CellKind::Gru { h } else { 0 };
        parts.push(SizePart { layer: l, part: "bias", count: g + rec_bias, bits: 32 });
        let norm = match m.normalization {
            Normalization::None => 0,
            Normalization::Weight => 2 * g,
            Normalization::Layer => 4 * g,
            Normalization::BatchShared => 8 * g,
            Normalization::BatchSeparate => 4 * g * (spec.train.bptt + 1),
        };
        if norm > 0 {
            parts.push(SizePart { layer: l, part: "normalization", count: norm, bits: 32 });
        }
    }
    parts
}

/// Total size in KB, rounded half up.
pub fn size_kb(spec: &Spec, vocab: usize) -> u64 {
    kb(breakdown(spec, vocab).iter().map(SizePart::bytes).sum())
}

pub fn kb(bytes: f64) -> u64 {
    (bytes / 1024.0 + 0.5).floor() as u64
}

/// Bytes a run needs, estimated: parameters with their gradients and Adam moments, the
/// window caches of every layer (gates, h/c/tanh c, their gradients, normalizer caches), the
/// logits, and the per-window weight copies.
pub fn memory_estimate(spec: &Spec, vocab: usize) -> f64 {
    let m = &spec.model;
    let (h, l) = (m.hidden as f64, m.layers as f64);
    let gates = m.cell.gates() as f64;
    let r = spec.input_size(vocab) as f64;
    let params = gates * h * (r + h + 3.0)
        + gates * h * (h + h + 3.0) * (l - 1.0)
        + (vocab as f64) * (h + 1.0)
        + (vocab * m.embedding) as f64;
    let rows = (spec.train.batch_size.max(spec.train.eval_batch_size) * spec.train.bptt) as f64;
    let per_layer = rows * (gates + 3.0 + gates + 4.0 * gates) * h;
    let floats = params * 4.0 + l * per_layer + 2.0 * rows * vocab as f64 + 2.0 * gates * h * (r + h) * l;
    floats * 4.0
}

/// Refuse a model that cannot fit in memory, with an estimate, before allocating it.
pub fn check_memory(spec: &Spec, vocab: usize) -> Result<()> {
    let m = &spec.model;
    let rows = spec.train.batch_size.max(spec.train.eval_batch_size) * spec.train.bptt;
    let bytes = memory_estimate(spec, vocab);
    if let Some(avail) = available_memory()
        && bytes > 0.9 * avail
    {
        bail!(
            "model.hidden = {}, model.layers = {}, batch × bptt = {}: training needs about {:.1} GiB of memory, {:.1} GiB is available",
            m.hidden,
            m.layers,
            rows,
            bytes / (1u64 << 30) as f64,
            avail / (1u64 << 30) as f64
        );
    }
    Ok(())
}

/// The memory this machine has free (Linux's MemAvailable), if it says.
fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Quantizer, Task};

    #[test]
    fn gru_sizes_by_docs_spec_section_6() {
        // ptb_char GRU H = 512, bc/weight: 3·512·(50 + 512) bits + 4·512·32 + 6·512·32 bits
        let mut s = spec(Task::PtbChar, 512, 1, Quantizer::Bc, Normalization::Weight);
        s.model.cell = CellKind::Gru;
        let bytes = (3.0 * 512.0 * 562.0 + (4.0 * 512.0 + 6.0 * 512.0) * 32.0) / 8.0;
        assert_eq!(size_kb(&s, 50), kb(bytes));
        // batch_separate: 12H(T_max + 1) normalizer floats
        s.model.normalization = Normalization::BatchSeparate;
        let parts = breakdown(&s, 50);
        assert_eq!(parts.iter().find(|p| p.part == "normalization").unwrap().count, 12 * 512 * 101);
        assert_eq!(parts.iter().find(|p| p.part == "bias").unwrap().count, 4 * 512);
    }

    fn spec(task: Task, h: usize, layers: usize, q: Quantizer, n: Normalization) -> Spec {
        let mut s = Spec::defaults(task);
        s.model.hidden = h;
        s.model.layers = layers;
        s.model.quantizer = q;
        s.model.normalization = n;
        if task == Task::PtbWord {
            s.model.embedding = h;
        }
        s
    }

    #[test]
    fn spec_checks() {
        assert_eq!(size_kb(&spec(Task::PtbChar, 512, 1, Quantizer::Fp, Normalization::None), 50), 4504);
        assert_eq!(size_kb(&spec(Task::PtbChar, 512, 1, Quantizer::Bc, Normalization::Weight), 50), 165);
        assert_eq!(size_kb(&spec(Task::PtbWord, 650, 2, Quantizer::Fp, Normalization::None), 10000), 26427);
        assert_eq!(size_kb(&spec(Task::PtbWord, 650, 2, Quantizer::Bc, Normalization::BatchSeparate), 10000), 3771);
        assert_eq!(size_kb(&spec(Task::SeqMnist, 100, 1, Quantizer::Bc, Normalization::None), 0), 8);
    }
}
