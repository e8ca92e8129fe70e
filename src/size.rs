//! Model-size accounting of the paper's tables (SPEC §4). Only the LSTM layers count: weights
//! at their bits (scales α not counted), the bias at 32 bits, and the normalization parameters
//! at 32 bits. Sequential MNIST keeps W_x at 32 bits. KB = 1024 bytes, rounded half up.

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
