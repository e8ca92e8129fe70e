//! `qlstm table`: runs laid out as the paper's tables — rows in the paper's order, our test
//! metric and size beside the published ones, the difference, and the budget each cell ran
//! with. Cells not run are empty; diverged runs say so (the paper prints N/A).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bail;
use crate::error::Result;
use crate::io::{csv_bytes, read_csv};
use crate::nn::Normalization;
use crate::run_dir::{Metric, RunDir, Status, Summary};
use crate::spec::{Spec, Task};

/// The published numbers (copied from ../shared/reference into results/reference/).
const TABLE2: &str = include_str!("../../results/reference/table2_char.csv");
const TABLE3: &str = include_str!("../../results/reference/table3_word.csv");
const TABLE4: &str = include_str!("../../results/reference/table4_mnist.csv");
const TWO_LAYER: &str = include_str!("../../results/reference/two_layer_ptb.csv");

/// The paper's tables, the GRU's, and `seeds` (each cell's seed-to-seed spread, `spread.rs`).
pub const LAYOUTS: [&str; 6] = ["table2", "table3", "table4", "two_layer", "gru", "seeds"];

/// A cell key: the row appears only when a run fills it.
const OPTIONAL: &str = "optional";

/// A finished (or stopped) run found under a results directory.
#[derive(Clone, Debug)]
pub struct Run {
    pub dir: PathBuf,
    pub spec: Spec,
    pub summary: Summary,
}

/// Every run directory (one with summary.csv and spec.toml) below the given roots.
pub fn find_runs(roots: &[PathBuf]) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for root in roots {
        if !root.is_dir() {
            bail!("{}: not a directory of runs", root.display());
        }
        walk(root, &mut runs)?;
    }
    Ok(runs)
}

fn walk(dir: &Path, runs: &mut Vec<Run>) -> Result<()> {
    let run = RunDir::at(dir);
    if run.has_results() {
        let spec = run.read_spec()?;
        if let Some(summary) = run.read_summary()? {
            runs.push(Run { dir: dir.to_path_buf(), spec, summary });
        }
        return Ok(());
    }
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(|e| crate::error::io_err(dir, e))?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for e in entries.into_iter().filter(|p| p.is_dir()) {
        walk(&e, runs)?;
    }
    Ok(())
}

/// One row of a table: the cell it describes, the published values, and our run (if any).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub table: String,
    pub dataset: String,
    pub layers: String,
    pub hidden: String,
    pub quantizer: String,
    pub normalization: String,
    pub metric: String,
    pub ours: String,
    pub paper: String,
    pub diff: String,
    pub ours_size_kb: String,
    pub paper_size_kb: String,
    pub status: String,
    pub epochs: String,
    pub steps: String,
    pub run: String,
    pub note: String,
    /// `--layout gru` only: our LSTM's test metric for the same cell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lstm: Option<String>,
}

fn parse_reference(text: &str) -> Vec<HashMap<String, String>> {
    read_csv(text.as_bytes(), "results/reference").expect("the reference tables are valid CSV")
}

/// The cells of a layout, in the paper's order: (dataset, task, layers, hidden, embedding,
/// quantizer, normalization, reference row if published).
fn cells(layout: &str) -> Result<Vec<(HashMap<String, String>, bool)>> {
    let (text, with_layers) = match layout {
        "table2" => (TABLE2, false),
        "table3" => (TABLE3, true),
        "two_layer" => (TWO_LAYER, true),
        "table4" => {
            // The paper's Table 4 publishes few numbers; lay out every fp/bc/tc × normalization
            // cell of seq_mnist and attach the published values where there are some.
            let refs = parse_reference(TABLE4);
            let mut out = Vec::new();
            for q in ["fp", "bc", "tc"] {
                for n in Normalization::ALL.iter().map(|n| n.name()) {
                    let mut row: HashMap<String, String> = refs
                        .iter()
                        .find(|r| r["quantizer"] == q && r["normalization"] == n)
                        .cloned()
                        .unwrap_or_default();
                    row.insert("table".into(), "4".into());
                    row.insert("dataset".into(), "seq_mnist".into());
                    row.insert("hidden".into(), "100".into());
                    row.insert("quantizer".into(), q.into());
                    row.insert("normalization".into(), n.into());
                    out.push((row, false));
                }
            }
            // Permuted MNIST (not in the paper's table): the layer-norm cells the reproduction
            // runs, shown only where there is a run of them.
            for q in ["fp", "bc", "tc"] {
                let row: HashMap<String, String> = [
                    ("table", "4"),
                    ("dataset", "pmnist"),
                    ("hidden", "100"),
                    ("quantizer", q),
                    ("normalization", "layer"),
                    ("note", "permuted MNIST; not in the paper's table"),
                    (OPTIONAL, "1"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
                out.push((row, false));
            }
            return Ok(out);
        }
        "gru" => {
            // The GRU is not in the paper (docs/SPEC.md §6): the blocks the GRU issue runs, each
            // cell with our LSTM's number beside it.
            let mut out = Vec::new();
            for (dataset, hidden, embedding) in
                [("ptb_char", "512", ""), ("ptb_word", "300", "300"), ("seq_mnist", "100", "")]
            {
                for q in ["fp", "bc", "tc"] {
                    for n in Normalization::ALL.iter().map(|n| n.name()) {
                        let row: HashMap<String, String> = [
                            ("table", "gru"),
                            ("dataset", dataset),
                            ("layers", "1"),
                            ("hidden", hidden),
                            ("embedding", embedding),
                            ("quantizer", q),
                            ("normalization", n),
                            ("cell", "gru"),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                        out.push((row, false));
                    }
                }
            }
            return Ok(out);
        }
        other => bail!("--layout {other}: allowed: {}", LAYOUTS.join(", ")),
    };
    Ok(complete_blocks(parse_reference(text)).into_iter().map(|r| (r, with_layers)).collect())
}

/// Every fp/bc/tc × normalization cell of each block (dataset, layers, hidden, embedding) the
/// paper has, in the paper's order: a cell it did not publish (Table 3 prints full precision
/// only without normalization) is inserted after its quantizer's last published row, with
/// no paper value, so that our runs of it show.
fn complete_blocks(refs: Vec<HashMap<String, String>>) -> Vec<HashMap<String, String>> {
    let field = |r: &HashMap<String, String>, k: &str| r.get(k).cloned().unwrap_or_default();
    let block = |r: &HashMap<String, String>| ["dataset", "layers", "hidden", "embedding"].map(|k| field(r, k));
    let mut out = refs.clone();
    for q in ["fp", "bc", "tc"] {
        let mut blocks: Vec<[String; 4]> = refs.iter().map(block).collect();
        blocks.dedup();
        for b in blocks {
            for n in Normalization::ALL.iter().map(|n| n.name()) {
                let same = |r: &HashMap<String, String>| block(r) == b && field(r, "quantizer") == q;
                if out.iter().any(|r| same(r) && field(r, "normalization") == n) {
                    continue;
                }
                let Some(anchor) = out.iter().rposition(same).or_else(|| out.iter().rposition(|r| block(r) == b))
                else {
                    continue;
                };
                let mut cell: HashMap<String, String> = ["table", "dataset", "layers", "hidden", "embedding", "bptt"]
                    .iter()
                    .map(|k| (k.to_string(), field(&out[anchor], k)))
                    .collect();
                cell.insert("quantizer".into(), q.into());
                cell.insert("normalization".into(), n.into());
                cell.insert("note".into(), "not published".into());
                out.insert(anchor + 1, cell);
            }
        }
    }
    out
}

/// The paper's published test metric for the cell a spec describes (its tables and the
/// two-layer response; LSTM cells only), if it printed one.
pub fn published(spec: &Spec) -> Option<f64> {
    [TABLE2, TABLE3, TWO_LAYER, TABLE4]
        .iter()
        .flat_map(|t| parse_reference(t))
        .filter(|cell| matches_spec(spec, cell))
        .find_map(|cell| cell.iter().find(|(k, _)| k.starts_with("paper_test_")).and_then(|(_, v)| v.parse().ok()))
}

/// Does this run fill this cell?
fn matches(run: &Run, cell: &HashMap<String, String>) -> bool {
    matches_spec(&run.spec, cell)
}

fn matches_spec(s: &Spec, cell: &HashMap<String, String>) -> bool {
    let task = match cell["dataset"].as_str() {
        "seq_mnist" => s.task == Task::SeqMnist,
        d => s.task.name() == d,
    };
    let num = |k: &str, v: usize| cell.get(k).is_none_or(|x| x.is_empty() || x.parse::<usize>().ok() == Some(v));
    let cell_kind = cell.get("cell").map_or("lstm", String::as_str);
    task && s.model.cell.name() == cell_kind
        && num("hidden", s.model.hidden)
        && num("layers", s.model.layers)
        && (!s.task.uses_embedding() || num("embedding", s.model.embedding))
        && s.model.quantizer.name() == cell["quantizer"]
        && s.model.normalization.name() == cell["normalization"]
}

/// Build the table: one row per cell, filled from the best-trained matching run.
pub fn build(layout: &str, runs: &[Run]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (cell, _) in cells(layout)? {
        let field = |k: &str| cell.get(k).cloned().unwrap_or_default();
        let paper = cell.keys().find(|k| k.starts_with("paper_test_")).map_or(String::new(), |k| cell[k].clone());
        let metric = match cell["dataset"].as_str() {
            "ptb_word" => Metric::Ppl,
            "seq_mnist" | "pmnist" => Metric::ErrorPct,
            _ => Metric::Bpc,
        };
        let best_of = |cell: &HashMap<String, String>| {
            runs.iter().filter(|r| matches(r, cell)).max_by_key(|r| (r.summary.steps, r.dir.clone()))
        };
        let best = best_of(&cell);
        if best.is_none() && cell.contains_key(OPTIONAL) {
            continue;
        }
        // the gru layout sets our LSTM's figure for the same cell beside the GRU's
        let lstm = (layout == "gru").then(|| {
            let mut as_lstm = cell.clone();
            as_lstm.insert("cell".into(), "lstm".into());
            best_of(&as_lstm)
                .filter(|r| r.summary.status == Status::Ok)
                .map_or(String::new(), |r| format!("{:.3}", r.summary.test_metric))
        });
        let mut row = Row {
            table: field("table"),
            dataset: field("dataset"),
            layers: cell.get("layers").cloned().unwrap_or_else(|| "1".into()),
            hidden: field("hidden"),
            quantizer: field("quantizer"),
            normalization: field("normalization"),
            metric: metric.name().into(),
            paper,
            paper_size_kb: field("paper_size_kb"),
            note: field("note"),
            lstm,
            ..Row::default()
        };
        if let Some(r) = best {
            let s = &r.summary;
            // only a finished run has a test figure (diverged: the paper's N/A; interrupted:
            // not there yet)
            if s.status == Status::Ok {
                row.ours = format!("{:.3}", s.test_metric);
            }
            row.ours_size_kb = s.size_kb.to_string();
            row.status = s.status.name().into();
            row.epochs = s.epochs_run.to_string();
            row.steps = s.steps.to_string();
            row.run = r.dir.display().to_string();
        }
        if let (Ok(a), Ok(b)) = (row.ours.parse::<f64>(), row.paper.parse::<f64>()) {
            row.diff = format!("{:.3}", a - b);
        }
        if row.dataset == "warpeace" && !row.ours_size_kb.is_empty() {
            let sep = if row.note.is_empty() { "" } else { "; " };
            row.note = format!(
                "{}{sep}our size uses our War and Peace copy's vocabulary (LF line endings, 83 bytes vs the paper's 87)",
                row.note
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

pub fn to_csv(rows: &[Row]) -> Result<String> {
    Ok(String::from_utf8(csv_bytes(rows)?).expect("CSV of strings is UTF-8"))
}

/// The table as Markdown: the CSV's columns but the run directory and the table number.
pub fn to_markdown(rows: &[Row]) -> Result<String> {
    csv_to_markdown(&csv_bytes(rows)?, &["run", "table"])
}

/// A CSV text as a Markdown table without the columns named in `skip`.
pub fn csv_to_markdown(text: &[u8], skip: &[&str]) -> Result<String> {
    let mut r = ::csv::Reader::from_reader(text);
    let header: Vec<String> =
        r.headers().map_err(|e| crate::error::Error::new(e.to_string()))?.iter().map(String::from).collect();
    let keep: Vec<usize> = (0..header.len()).filter(|&i| !skip.contains(&header[i].as_str())).collect();
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", keep.iter().map(|&i| header[i].as_str()).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(keep.len()));
    for rec in r.records() {
        let rec = rec.map_err(|e| crate::error::Error::new(e.to_string()))?;
        let _ = writeln!(s, "| {} |", keep.iter().map(|&i| &rec[i]).collect::<Vec<_>>().join(" | "));
    }
    Ok(s)
}

/// The table of the runs below `roots`, as CSV or Markdown text.
pub fn table(roots: &[PathBuf], layout: &str, markdown: bool) -> Result<String> {
    let runs = find_runs(roots)?;
    if runs.is_empty() {
        let names: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        bail!(
            "{}: no runs found below (a run directory holds {} and {}); is it the --out of a run or a sweep?",
            names.join(", "),
            RunDir::SPEC,
            RunDir::SUMMARY
        );
    }
    if layout == "seeds" {
        let rows = super::spread::build(&runs);
        return if markdown { csv_to_markdown(&csv_bytes(&rows)?, &[]) } else { super::spread::to_csv(&rows) };
    }
    let rows = build(layout, &runs)?;
    if markdown { to_markdown(&rows) } else { to_csv(&rows) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(rows: &[HashMap<String, String>]) -> Vec<(String, String, String)> {
        rows.iter().map(|r| (r["hidden"].clone(), r["quantizer"].clone(), r["normalization"].clone())).collect()
    }

    #[test]
    fn unpublished_cells_join_their_block_after_the_published_ones() {
        // Table 2 publishes every cell: nothing is added.
        assert_eq!(complete_blocks(parse_reference(TABLE2)).len(), parse_reference(TABLE2).len());
        // Table 3 publishes full precision only without normalization: the other four follow it.
        let k = keys(&complete_blocks(parse_reference(TABLE3)));
        let fp300: Vec<_> = k.iter().skip_while(|c| c.0 != "300").take(5).cloned().collect();
        let want: Vec<_> =
            Normalization::ALL.iter().map(|n| ("300".to_string(), "fp".to_string(), n.to_string())).collect();
        assert_eq!(fp300, want);
        for h in ["300", "650"] {
            for q in ["fp", "bc", "tc"] {
                for n in Normalization::ALL.iter().map(|n| n.name()) {
                    let c = (h.to_string(), q.to_string(), n.to_string());
                    assert_eq!(k.iter().filter(|x| **x == c).count(), 1, "{c:?}");
                }
            }
        }
        // the published rows are all there, unchanged and in their order
        let completed = complete_blocks(parse_reference(TABLE3));
        let published: Vec<_> = completed.iter().filter(|r| r["note"] != "not published").cloned().collect();
        assert_eq!(published, parse_reference(TABLE3));
    }
}
