//! `qlstm eval`: recompute a trained model's metric from its checkpoint, with the spec stored
//! in the checkpoint (fields can be overridden, e.g. data.dir).

use std::path::Path;

use serde::Serialize;

use crate::bail;
use crate::cmd::print_csv;
use crate::error::Result;
use crate::io::checkpoint;
use crate::run_dir::RunDir;
use crate::spec::Spec;
use crate::train::{Split, Trainer};

/// The one line `qlstm eval` prints.
#[derive(Serialize, Default)]
struct EvalRow {
    name: String,
    checkpoint: String,
    split: &'static str,
    metric: String,
    value: f64,
    loss_nats: f64,
}

/// `qlstm eval --packed FILE`: the same evaluation through the packed model's bit kernels.
pub fn eval_packed(file: &Path, split: Split, sets: &[String], threads: Option<usize>) -> Result<()> {
    crate::cmd::set_threads(threads);
    let (spec, model) = crate::export::packed::load(file, sets)?;
    let name = spec.name.clone();
    let mut t =
        Trainer::new(spec)?.with_model(model).with_observer(Box::new(crate::cmd::progress::Progress::new(&name)));
    report(&mut t, file, split)
}

fn report(t: &mut Trainer, file: &Path, split: Split) -> Result<()> {
    let stats = t.evaluate(split);
    let metric = t.metric();
    print_csv(&[EvalRow {
        name: t.spec.name.clone(),
        checkpoint: file.display().to_string(),
        split: if split == Split::Valid { "valid" } else { "test" },
        metric: metric.name().into(),
        value: metric.value(&stats),
        loss_nats: stats.mean_loss(),
    }])
}

pub fn eval(path: &Path, split: Split, sets: &[String], threads: Option<usize>) -> Result<()> {
    crate::cmd::set_threads(threads);
    let file = if path.is_dir() {
        let run = RunDir::at(path);
        if run.best().exists() { run.best() } else { run.checkpoint() }
    } else {
        path.to_path_buf()
    };
    if !file.exists() {
        bail!("{}: no best.safetensors or checkpoint.safetensors here", path.display());
    }
    let ck = checkpoint::read(&file)?;
    let spec = Spec::from_toml_str(ck.meta("spec")?, &ck.path, None, sets)?;
    let name = spec.name.clone();
    let mut t = Trainer::new(spec)?.with_observer(Box::new(crate::cmd::progress::Progress::new(&name)));
    t.load_model(&file)?;
    report(&mut t, &file, split)
}
