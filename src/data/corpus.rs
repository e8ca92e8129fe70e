//! Language-model text → token ids, as the reference code tokenizes it (docs/SPEC.md §3).
//!
//! - ptb_word / ptb_char: whitespace tokens plus one `<eos>` per line; the vocabulary is built
//!   from train, then valid, then test, in order of first appearance (PyTorch's data.py).
//! - warpeace: raw bytes, vocabulary = the distinct bytes (sorted), contiguous 80/10/10 split.
//! - text8: raw bytes, first 90M / next 5M / last 5M (proportionally 90/5/5 for other sizes,
//!   so a small file in text8 format works too).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::bail;
use crate::error::{Error, Result};
use crate::spec::Task;

#[derive(Clone, Debug)]
pub struct Corpus {
    /// The symbol of every token id (a word, a character, or a byte shown as text).
    pub symbols: Vec<String>,
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
    pub test: Vec<u32>,
    /// Where train, valid and test came from, for messages ("…/ptb.char.test.txt", or "…/input.txt
    /// (its last 10 %)" for a corpus split from one file).
    pub sources: [String; 3],
}

impl Corpus {
    pub fn vocab(&self) -> usize {
        self.symbols.len()
    }

    pub fn load(task: Task, dir: &Path) -> Result<Corpus> {
        match task {
            Task::PtbWord => {
                let f = |s| dir.join("ptb").join(format!("ptb.{s}.txt"));
                Corpus::from_line_files(task, [f("train"), f("valid"), f("test")])
            }
            Task::PtbChar => {
                let f = |s| dir.join("ptb_char").join(format!("ptb.char.{s}.txt"));
                Corpus::from_line_files(task, [f("train"), f("valid"), f("test")])
            }
            Task::Warpeace => {
                let path = dir.join("warpeace").join("input.txt");
                let bytes = read(task, &path)?;
                Corpus::from_bytes(&path, &bytes, |n| (n * 8 / 10, n / 10))
            }
            Task::Text8 => {
                let path = dir.join("text8").join("text8");
                let bytes = read(task, &path)?;
                if let Some(pos) = bytes.iter().position(|&b| b != b' ' && !b.is_ascii_lowercase()) {
                    bail!(
                        "{}: byte {pos} is {:?}; text8 holds only a-z and spaces",
                        path.display(),
                        bytes[pos] as char
                    );
                }
                Corpus::from_bytes(&path, &bytes, |n| {
                    if n == 100_000_000 { (90_000_000, 5_000_000) } else { (n * 90 / 100, n * 5 / 100) }
                })
            }
            Task::SeqMnist | Task::Pmnist => bail!("{} is not a language-model task", task.name()),
        }
    }

    /// Whitespace tokens plus `<eos>` at the end of every line.
    fn from_line_files(task: Task, paths: [PathBuf; 3]) -> Result<Corpus> {
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut symbols = Vec::new();
        let mut splits = Vec::new();
        for path in &paths {
            let bytes = read(task, path)?;
            let text = String::from_utf8(bytes)
                .map_err(|e| Error::new(format!("{}: not UTF-8 text ({e})", path.display())))?;
            let mut ids = Vec::new();
            for line in text.lines() {
                for w in line.split_whitespace().chain(std::iter::once("<eos>")) {
                    let next = symbols.len() as u32;
                    let id = *index.entry(w.to_string()).or_insert_with(|| {
                        symbols.push(w.to_string());
                        next
                    });
                    ids.push(id);
                }
            }
            if ids.is_empty() {
                bail!("{}: no tokens; the file is empty or truncated", path.display());
            }
            splits.push(ids);
        }
        let test = splits.pop().unwrap();
        let valid = splits.pop().unwrap();
        let train = splits.pop().unwrap();
        let sources = paths.map(|p| p.display().to_string());
        Ok(Corpus { symbols, train, valid, test, sources })
    }

    /// Bytes as tokens, contiguous split; `split(n)` gives (train length, valid length).
    fn from_bytes(path: &Path, bytes: &[u8], split: impl Fn(usize) -> (usize, usize)) -> Result<Corpus> {
        let mut present = [false; 256];
        for &b in bytes {
            present[b as usize] = true;
        }
        let mut map = [0u32; 256];
        let mut symbols = Vec::new();
        for b in 0..256 {
            if present[b] {
                map[b] = symbols.len() as u32;
                symbols.push(String::from_utf8_lossy(&[b as u8]).into_owned());
            }
        }
        let ids: Vec<u32> = bytes.iter().map(|&b| map[b as usize]).collect();
        let (n_train, n_valid) = split(ids.len());
        if n_train < 2 || n_valid < 2 || ids.len() - n_train - n_valid < 2 {
            bail!("{}: {} bytes is too small to split into train/valid/test", path.display(), ids.len());
        }
        let part = |what: &str| format!("{} ({what})", path.display());
        Ok(Corpus {
            sources: [part("its training part"), part("its validation part"), part("its test part")],
            symbols,
            train: ids[..n_train].to_vec(),
            valid: ids[n_train..n_train + n_valid].to_vec(),
            test: ids[n_train + n_valid..].to_vec(),
        })
    }

    /// Unigram entropy of the training text in nats: the loss of the best model that ignores
    /// context; a trained LSTM must land well below it.
    pub fn unigram_entropy(&self) -> f64 {
        let mut counts = vec![0usize; self.vocab()];
        for &t in &self.train {
            counts[t as usize] += 1;
        }
        let n = self.train.len() as f64;
        counts.iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).ln()).sum()
    }
}

/// Read a data file; a missing one says how to fetch it.
pub(crate) fn read(task: Task, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        let hint = match task {
            Task::Text8 => " (text8 is only available from its original URL)".to_string(),
            _ => String::new(),
        };
        Error::new(format!("{}: {e}{hint}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text8_format_small_file() {
        let dir = std::env::temp_dir().join(format!("qlstm-text8-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("text8")).unwrap();
        let text =
            " anarchism originated as a term of abuse first used against early working class radicals".repeat(20);
        std::fs::write(dir.join("text8/text8"), &text).unwrap();
        let c = Corpus::load(Task::Text8, &dir).unwrap();
        let n = text.len();
        assert_eq!(c.train.len(), n * 90 / 100);
        assert_eq!(c.valid.len(), n * 5 / 100);
        assert_eq!(c.train.len() + c.valid.len() + c.test.len(), n);
        assert!(c.vocab() <= 27 && c.symbols[0] == " ");
        std::fs::write(dir.join("text8/text8"), "Hello world").unwrap();
        let e = Corpus::load(Task::Text8, &dir).unwrap_err().0;
        assert!(e.contains("only a-z and spaces"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Corpus::load(Task::Text8, &dir).unwrap_err().0;
        assert!(e.contains("text8/text8") && e.contains("original URL"), "{e}");
    }
}
