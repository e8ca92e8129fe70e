//! Loaders on the real data that `scripts/get_data.sh` fetches (CI runs it first).

use std::path::PathBuf;

use qlstm::data::{Corpus, Mnist};
use qlstm::spec::Task;

fn data_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    assert!(d.join("ptb/ptb.train.txt").exists(), "run scripts/get_data.sh first (no {}/ptb)", d.display());
    d
}

fn md5(path: &std::path::Path) -> String {
    let out = std::process::Command::new("md5sum").arg(path).output().expect("md5sum");
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn ptb_word_files_and_token_counts() {
    let d = data_dir();
    for (split, sum) in [
        ("train", "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
        ("valid", "aa0affc06ff7c36e977d7cd49e3839bf"),
        ("test", "8b80168b89c18661a38ef683c0dc3721"),
    ] {
        assert_eq!(md5(&d.join(format!("ptb/ptb.{split}.txt"))), sum, "ptb.{split}.txt");
    }
    let c = Corpus::load(Task::PtbWord, &d).unwrap();
    assert_eq!((c.train.len(), c.valid.len(), c.test.len()), (929_589, 73_760, 82_430));
    assert_eq!(c.vocab(), 10_000);
}

#[test]
fn ptb_char_vocabulary_and_size() {
    let c = Corpus::load(Task::PtbChar, &data_dir()).unwrap();
    assert_eq!(c.vocab(), 50);
    assert_eq!(c.train.len(), 5_017_482);
    assert!(c.symbols.contains(&"_".to_string()) && c.symbols.contains(&"<eos>".to_string()));
    let h = c.unigram_entropy() / std::f64::consts::LN_2;
    assert!((4.0..4.6).contains(&h), "unigram entropy {h} bits");
}

#[test]
fn warpeace_bytes_split_80_10_10() {
    let c = Corpus::load(Task::Warpeace, &data_dir()).unwrap();
    let n = c.train.len() + c.valid.len() + c.test.len();
    assert_eq!(n, 3_196_228);
    assert_eq!(c.train.len(), n * 8 / 10);
    assert_eq!(c.valid.len(), n / 10);
    // ../shared/data/README.md says 84 distinct bytes; the file itself has 83 (Python agrees).
    // The paper's CRLF file with its byte-order mark has 87.
    assert_eq!(c.vocab(), 83);
}

#[test]
fn mnist_counts_and_split() {
    let m = Mnist::load(&data_dir()).unwrap();
    assert_eq!((m.train.len(), m.valid.len(), m.test.len()), (50_000, 10_000, 10_000));
    assert_eq!(m.train.images.len(), 50_000 * 784);
    // the first training label of MNIST is a 5, the first test label a 7
    assert_eq!((m.train.labels[0], m.test.labels[0]), (5, 7));
    let mut counts = [0usize; 10];
    for &l in m.valid.labels.iter() {
        counts[l as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
}
