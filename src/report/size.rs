//! `qlstm size`: the SPEC §4 breakdown of a spec, as text or CSV, without training.

use std::path::Path;

use crate::data::TaskData;
use crate::error::Result;
use crate::size::{SizePart, breakdown, kb};
use crate::spec::{Spec, Task};

/// Standard vocabulary sizes, used when the data is not fetched.
pub fn standard_vocab(task: Task) -> usize {
    match task {
        Task::PtbChar => 50,
        Task::PtbWord => 10000,
        Task::Text8 => 27,
        Task::Warpeace => 87,
        Task::SeqMnist | Task::Pmnist => 10,
    }
}

pub fn size_report(path: &Path, sets: &[String], csv: bool) -> Result<()> {
    let spec = Spec::load(path, sets)?;
    let (vocab, source) = match TaskData::load(&spec) {
        Ok(d) => (d.vocab(), format!("vocabulary {} from the data in {}", d.vocab(), spec.data.dir)),
        Err(_) => {
            let v = standard_vocab(spec.task);
            (v, format!("standard vocabulary {v} of {} (data not found in {})", spec.task.name(), spec.data.dir))
        }
    };
    let parts = breakdown(&spec, vocab);
    let total: f64 = parts.iter().map(SizePart::bytes).sum();
    if csv {
        println!("layer,part,count,bits,bytes,kb");
        for p in &parts {
            println!("{},{},{},{},{},{:.3}", p.layer, p.part, p.count, p.bits, p.bytes(), p.bytes() / 1024.0);
        }
        println!(",total,,,{},{}", total, kb(total));
    } else {
        println!(
            "{}: {} {} {} ({source})",
            spec.name,
            spec.task.name(),
            crate::spec::Quantizer::ALL[spec.model.quantizer as usize],
            crate::spec::Normalization::ALL[spec.model.normalization as usize]
        );
        for p in &parts {
            println!(
                "  layer {} {:<14} {:>10} × {:>2} bits = {:>12.1} bytes",
                p.layer,
                p.part,
                p.count,
                p.bits,
                p.bytes()
            );
        }
        println!("  total {} KB", kb(total));
    }
    Ok(())
}
