//! `qlstm sample`: text from a trained character, byte or word model — its checkpoint, or the
//! packed file through the bit kernels — one token at a time from a prime, with a temperature
//! and a seed (the same seed, the same text).

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::bail;
use crate::data::TaskData;
use crate::error::{Error, Result};
use crate::export::packed;
use crate::io::checkpoint;
use crate::model::{Input, Model};
use crate::run_dir::RunDir;
use crate::spec::{Spec, Task};

/// What to sample from.
pub enum Source<'a> {
    /// A run directory (its best.safetensors, else checkpoint.safetensors).
    Run(&'a Path),
    /// A `qlstm export` file.
    Packed(&'a Path),
}

pub struct SampleArgs<'a> {
    pub source: Source<'a>,
    pub len: usize,
    pub temperature: f64,
    pub prime: Option<&'a str>,
    pub seed: u64,
}

pub fn sample(a: &SampleArgs) -> Result<()> {
    let (spec, mut model, symbols) = match a.source {
        Source::Run(dir) => {
            let run = RunDir::at(dir);
            let file = if run.best().exists() { run.best() } else { run.checkpoint() };
            if !file.exists() {
                bail!("{}: no best.safetensors or checkpoint.safetensors here", dir.display());
            }
            let (spec, model) = packed::load_checkpoint_model(&file, &[])?;
            let symbols = match TaskData::load(&spec)? {
                TaskData::Lm(c) => c.symbols,
                TaskData::Mnist(..) => Vec::new(),
            };
            (spec, model, symbols)
        }
        Source::Packed(file) => {
            let (spec, model) = packed::load(file, &[])?;
            let meta = checkpoint::read_meta_of(file, &[packed::FORMAT])?;
            let symbols: Vec<String> = match meta.get("vocabulary") {
                Some(v) => {
                    serde_json::from_str(v).map_err(|e| Error::new(format!("{}: vocabulary: {e}", file.display())))?
                }
                None => Vec::new(),
            };
            (spec, model, symbols)
        }
    };
    if spec.task.is_mnist() {
        bail!("{}: a sequential-MNIST classifier has no text to sample; sample a language model", spec.name);
    }
    if symbols.len() != model.decoder.weight.value.nrows() {
        bail!(
            "{}: the model predicts {} symbols but {} are known (a packed file exported without the data has no vocabulary: export where the data is)",
            spec.name,
            model.decoder.weight.value.nrows(),
            symbols.len()
        );
    }
    if !(a.temperature.is_finite() && a.temperature >= 0.0) {
        bail!("--temperature {}: allowed >= 0 (0 takes the most likely token)", a.temperature);
    }
    let prime = tokenize(&spec, &symbols, a.prime)?;
    let text = generate(&spec, &mut model, &prime, a.len, a.temperature, a.seed);
    let render = |ids: &[u32]| ids.iter().map(|&i| show(spec.task, &symbols[i as usize])).collect::<String>();
    print!("{}", render(&prime));
    println!("{}", render(&text));
    Ok(())
}

/// Run the prime through the model, then draw `len` tokens.
fn generate(spec: &Spec, model: &mut Model<f32>, prime: &[u32], len: usize, temperature: f64, seed: u64) -> Vec<u32> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut state = model.zero_state(1);
    let bptt = spec.train.bptt;
    let mut out = Vec::with_capacity(len);
    let mut logits = Vec::new();
    for (t, &tok) in prime.iter().enumerate() {
        logits = model.predict(Input::Tokens(&[tok]), &state, t % bptt).row(0).to_vec();
        state = model.final_state();
    }
    for k in 0..len {
        let next = draw(&logits, temperature, &mut rng);
        out.push(next);
        logits = model.predict(Input::Tokens(&[next]), &state, (prime.len() + k) % bptt).row(0).to_vec();
        state = model.final_state();
    }
    out
}

/// A token from softmax(logits / T); the arg-max for T = 0.
fn draw(logits: &[f32], temperature: f64, rng: &mut Pcg64Mcg) -> u32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    if temperature == 0.0 {
        return logits.iter().position(|&v| v as f64 == max).unwrap_or(0) as u32;
    }
    let p: Vec<f64> = logits.iter().map(|&v| ((v as f64 - max) / temperature).exp()).collect();
    let mut u = rng.random::<f64>() * p.iter().sum::<f64>();
    for (i, &pi) in p.iter().enumerate() {
        if u < pi {
            return i as u32;
        }
        u -= pi;
    }
    (p.len() - 1) as u32
}

/// The prime as token ids: PTB characters one by one (a space is `_`, a newline `<eos>`),
/// PTB words by whitespace, bytes as bytes. Without a prime: a line start (`<eos>`), or a
/// newline byte.
fn tokenize(spec: &Spec, symbols: &[String], prime: Option<&str>) -> Result<Vec<u32>> {
    let id = |s: &str| symbols.iter().position(|x| x == s).map(|i| i as u32);
    let start = || id("<eos>").or_else(|| id("\n")).unwrap_or(0);
    let Some(text) = prime.filter(|p| !p.is_empty()) else { return Ok(vec![start()]) };
    let pieces: Vec<String> = match spec.task {
        Task::PtbChar => text
            .chars()
            .map(|c| match c {
                ' ' => "_".to_string(),
                '\n' => "<eos>".to_string(),
                c => c.to_string(),
            })
            .collect(),
        Task::PtbWord => {
            text.lines().flat_map(|l| l.split_whitespace().map(String::from).chain(["<eos>".to_string()])).collect()
        }
        _ => text.bytes().map(|b| String::from_utf8_lossy(&[b]).into_owned()).collect(),
    };
    let mut ids = Vec::new();
    let mut unknown = Vec::new();
    for p in &pieces {
        match id(p).or_else(|| if spec.task == Task::PtbWord { id("<unk>") } else { None }) {
            Some(i) => ids.push(i),
            None => unknown.push(p.clone()),
        }
    }
    if !unknown.is_empty() {
        unknown.dedup();
        bail!("--prime: {:?} not in the model's vocabulary of {} symbols", unknown, symbols.len());
    }
    if spec.task == Task::PtbWord {
        ids.pop(); // the prime's last line continues
    }
    if ids.is_empty() {
        ids.push(start());
    }
    Ok(ids)
}

/// How a token reads in text.
fn show(task: Task, s: &str) -> String {
    match (task, s) {
        (_, "<eos>") => "\n".into(),
        (Task::PtbChar, "_") => " ".into(),
        (Task::PtbWord, w) => format!("{w} "),
        (_, s) => s.into(),
    }
}
