//! `qlstm size`: the docs/SPEC.md §4 breakdown of a spec, as text or CSV, without training.

use std::path::Path;

use serde::Serialize;

use crate::cmd::print_csv;
use crate::data::TaskData;
use crate::error::Result;
use crate::size::{SizePart, breakdown, kb};
use crate::spec::Spec;

/// One line of `qlstm size --csv`: a part of a layer, or the total (the last line).
#[derive(Serialize, Default)]
struct SizeRow {
    layer: Option<usize>,
    part: String,
    count: Option<usize>,
    bits: Option<u32>,
    /// Bytes, in as few digits as they need (bits / 8: 12800, or 12.5).
    bytes: String,
    /// bytes / 1024, three decimals.
    kb: String,
    /// The tables' figure: the total's KB rounded half up (total line only).
    size_kb: Option<u64>,
}

pub fn size(path: &Path, sets: &[String], csv: bool) -> Result<()> {
    let spec = Spec::load(path, sets)?;
    let (vocab, source) = match TaskData::load(&spec) {
        Ok(d) => (d.vocab(), format!("vocabulary {} from the data in {}", d.vocab(), spec.data.dir)),
        Err(_) => {
            let v = spec.task.standard_vocab();
            (v, format!("standard vocabulary {v} of {} (data not found in {})", spec.task, spec.data.dir))
        }
    };
    let parts = breakdown(&spec, vocab);
    let total: f64 = parts.iter().map(SizePart::bytes).sum();
    if csv {
        let mut rows: Vec<SizeRow> = parts
            .iter()
            .map(|p| SizeRow {
                layer: Some(p.layer),
                part: p.part.into(),
                count: Some(p.count),
                bits: Some(p.bits),
                bytes: p.bytes().to_string(),
                kb: format!("{:.3}", p.bytes() / 1024.0),
                size_kb: None,
            })
            .collect();
        rows.push(SizeRow {
            part: "total".into(),
            bytes: total.to_string(),
            kb: format!("{:.3}", total / 1024.0),
            size_kb: Some(kb(total)),
            ..SizeRow::default()
        });
        print_csv(&rows)?;
    } else {
        println!("{}: {} {} {} ({source})", spec.name, spec.task, spec.model.quantizer, spec.model.normalization);
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
