//! `qlstm table --layout seeds`: the seed-to-seed spread of each cell. Runs that differ only
//! in their seed (and name, data directory and diagnostics, which do not change training) are
//! one cell; a row gives the cell's finished runs' test metric as n, mean, sample standard
//! deviation, min, max and range, so a reader can tell which differences between cells are
//! effects and which are the seed's.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Result;
use crate::io::csv_bytes;
use crate::run_dir::Status;
use crate::spec::{DataSpec, Spec};

use super::table::Run;

/// One cell's spread.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SpreadRow {
    pub dataset: String,
    pub cell: String,
    pub layers: usize,
    pub hidden: usize,
    pub quantizer: String,
    pub normalization: String,
    /// `[train] gemm_precision`: cells that differ only in it are apart, and this says which is which.
    pub gemm_precision: String,
    pub metric: String,
    pub steps: u64,
    /// Finished runs (status ok); diverged or unfinished ones are counted apart.
    pub runs: usize,
    pub not_ok: usize,
    pub seeds: String,
    pub mean: String,
    pub std: String,
    pub min: String,
    pub max: String,
    pub range: String,
    /// The test metric of each finished run, in seed order.
    pub values: String,
}

/// What makes two runs the same experiment but for the seed.
fn cell_key(spec: &Spec) -> String {
    let mut s = spec.clone();
    s.name.clear();
    s.seed = 0;
    s.data = DataSpec { dir: String::new(), permutation_seed: s.data.permutation_seed, dir_origin: String::new() };
    format!("{:?}|{:?}|{:?}|{}", s.task, s.model, s.train, s.data.permutation_seed)
}

/// n, mean, sample standard deviation (n − 1; 0 for one run), min, max.
pub fn stats(v: &[f64]) -> (usize, f64, f64, f64, f64) {
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = if n > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (n, mean, var.sqrt(), min, max)
}

/// One row per cell, in the order cells are first met below the roots (sorted paths).
pub fn build(runs: &[Run]) -> Vec<SpreadRow> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        let k = cell_key(&r.spec);
        if !groups.contains_key(&k) {
            order.push(k.clone());
        }
        groups.entry(k).or_default().push(r);
    }
    let mut rows = Vec::new();
    for k in order {
        let mut members = groups.remove(&k).expect("every key has its group");
        members.sort_by_key(|r| r.spec.seed);
        let first = &members[0];
        let ok: Vec<&Run> = members.iter().copied().filter(|r| r.summary.status == Status::Ok).collect();
        let values: Vec<f64> = ok.iter().map(|r| r.summary.test_metric).collect();
        let mut row = SpreadRow {
            dataset: first.spec.task.name().into(),
            cell: first.spec.model.cell.name().into(),
            layers: first.spec.model.layers,
            hidden: first.spec.model.hidden,
            quantizer: first.spec.model.quantizer.name().into(),
            normalization: first.spec.model.normalization.name().into(),
            gemm_precision: first.spec.train.gemm_precision.name().into(),
            metric: first.summary.metric.name().into(),
            steps: members.iter().map(|r| r.summary.steps).max().unwrap_or(0),
            runs: ok.len(),
            not_ok: members.len() - ok.len(),
            seeds: members.iter().map(|r| r.spec.seed.to_string()).collect::<Vec<_>>().join(" "),
            values: values.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" "),
            ..SpreadRow::default()
        };
        if !values.is_empty() {
            let (n, mean, std, min, max) = stats(&values);
            row.mean = format!("{mean:.3}");
            row.std = if n > 1 { format!("{std:.4}") } else { String::new() };
            row.min = format!("{min:.3}");
            row.max = format!("{max:.3}");
            row.range = format!("{:.3}", max - min);
        }
        rows.push(row);
    }
    rows
}

pub fn to_csv(rows: &[SpreadRow]) -> Result<String> {
    Ok(String::from_utf8(csv_bytes(rows)?).expect("CSV of strings is UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_standard_deviation_by_hand() {
        // 1.78, 1.80, 1.82: mean 1.80, deviations ±0.02, Σ = 8e-4, /(n − 1) = 4e-4, √ = 0.02
        let (n, mean, std, min, max) = stats(&[1.80, 1.78, 1.82]);
        assert_eq!(n, 3);
        assert!((mean - 1.80).abs() < 1e-12 && (std - 0.02).abs() < 1e-12);
        assert_eq!((min, max), (1.78, 1.82));
        assert_eq!(stats(&[2.5]).2, 0.0);
    }
}
