//! Model-size accounting of the paper's tables (docs/SPEC.md §4), and the memory a run needs.
//! Only the recurrent layers count: weights at their bits (scales α not counted), the bias at
//! 32 bits, and the normalization parameters at 32 bits. Sequential MNIST keeps W_x at 32 bits.
//! KB = 1024 bytes, rounded half up.

use crate::bail;
use crate::error::Result;
use crate::spec::{Normalization, Spec};

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

/// Every part of every LSTM layer for a vocabulary of `vocab` symbols.
pub fn breakdown(spec: &Spec, vocab: usize) -> Vec<SizePart> {
    let m = &spec.model;
    let h = m.hidden;
    let g = 4 * h;
    let bits = m.quantizer.bits();
    let mut parts = Vec::new();
    for l in 0..m.layers {
        let r = if l == 0 { spec.input_size(vocab) } else { h };
        let x_bits = if spec.task.is_mnist() && l == 0 { 32 } else { bits };
        parts.push(SizePart { layer: l, part: "w_x", count: g * r, bits: x_bits });
        parts.push(SizePart { layer: l, part: "w_h", count: g * h, bits });
        parts.push(SizePart { layer: l, part: "bias", count: g, bits: 32 });
        let norm = match m.normalization {
            Normalization::None => 0,
            Normalization::Weight => 8 * h,
            Normalization::Layer => 16 * h,
            Normalization::BatchShared => 32 * h,
            Normalization::BatchSeparate => 16 * h * (spec.train.bptt + 1),
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
    let r = spec.input_size(vocab) as f64;
    let params = 4.0 * h * (r + h + 3.0)
        + 4.0 * h * (h + h + 3.0) * (l - 1.0)
        + (vocab as f64) * (h + 1.0)
        + (vocab * m.embedding) as f64;
    let rows = (spec.train.batch_size.max(spec.train.eval_batch_size) * spec.train.bptt) as f64;
    let per_layer = rows * (4.0 + 3.0 + 4.0 + 16.0) * h;
    let floats = params * 4.0 + l * per_layer + 2.0 * rows * vocab as f64 + 8.0 * h * (r + h) * l;
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
