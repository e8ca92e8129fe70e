//! `qlstm eval`: recompute a trained model's metric from its checkpoint, with the spec stored
//! in the checkpoint (fields can be overridden, e.g. data.dir).

use std::path::Path;

use crate::bail;
use crate::checkpoint;
use crate::error::Result;
use crate::spec::Spec;
use crate::train::Trainer;
use crate::train::trainer::Split;

pub fn eval(path: &Path, split: Split, sets: &[String]) -> Result<()> {
    let file = if path.is_dir() {
        let best = path.join("best.safetensors");
        if best.exists() { best } else { path.join("checkpoint.safetensors") }
    } else {
        path.to_path_buf()
    };
    if !file.exists() {
        bail!("{}: no best.safetensors or checkpoint.safetensors here", path.display());
    }
    let mut ck = checkpoint::read(&file)?;
    let spec = Spec::from_toml_str(ck.meta("spec")?, &ck.path, None, sets)?;
    let mut t = Trainer::new(spec)?;
    t.verbose = false;
    t.load_model(&mut ck)?;
    let stats = t.evaluate(split);
    let name = if split == Split::Valid { "valid" } else { "test" };
    let metric = t.spec.task.metric();
    let value = t.metric(&stats);
    println!("name,checkpoint,split,metric,value,loss_nats");
    println!("{},{},{name},{metric},{value},{}", t.spec.name, file.display(), stats.mean_loss());
    Ok(())
}
