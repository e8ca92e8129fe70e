//! The data of a task, loaded once: a language-model corpus or MNIST with its pixel order.

use std::path::Path;

use ndarray::Array2;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_pcg::Pcg64Mcg;

use crate::data::mnist::{MnistSplit, PIXELS};
use crate::data::{Corpus, Mnist};
use crate::error::{Error, Result};
use crate::spec::{DATA_ENV, Spec, Task};

/// How to fetch a task's data into `dir`: the checkout's `scripts/get_data.sh`, by its full path.
pub fn fetch_advice(task: Task, dir: &Path) -> String {
    if task == Task::Text8 {
        return "text8's only source is its original URL; put it at <data.dir>/text8/text8".into();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("scripts/get_data.sh");
    let target = task.data_target();
    let script =
        if script.exists() { script.display().to_string() } else { "scripts/get_data.sh (in a qlstm checkout)".into() };
    if dir == repo.join("data") {
        format!("fetch it with `{script} {target}`, or point data.dir or ${DATA_ENV} at a copy")
    } else {
        format!(
            "fetch it with `DATA_DIR={} {script} {target}`, or point data.dir or ${DATA_ENV} at a copy",
            dir.display()
        )
    }
}

pub enum TaskData {
    Lm(Corpus),
    /// MNIST with the pixel order (identity, or pmnist's fixed permutation).
    Mnist(Mnist, Vec<usize>),
}

impl TaskData {
    /// The task's data from `spec.data.dir`. An error names the file, how the directory was
    /// arrived at, and how to fetch the data into it.
    pub fn load(spec: &Spec) -> Result<TaskData> {
        Self::load_from(spec).map_err(|e| {
            let dir = Path::new(&spec.data.dir);
            let origin = if spec.data.dir_origin.is_empty() {
                format!("data.dir = {}", spec.data.dir)
            } else {
                spec.data.dir_origin.clone()
            };
            Error::new(format!("{e} [{origin}; {}]", fetch_advice(spec.task, dir)))
        })
    }

    fn load_from(spec: &Spec) -> Result<TaskData> {
        let dir = Path::new(&spec.data.dir);
        if spec.task.is_mnist() {
            let mut order: Vec<usize> = (0..PIXELS).collect();
            if spec.task == Task::Pmnist {
                order.shuffle(&mut Pcg64Mcg::seed_from_u64(spec.data.permutation_seed));
            }
            Ok(TaskData::Mnist(Mnist::load(dir)?, order))
        } else {
            Ok(TaskData::Lm(Corpus::load(spec.task, dir)?))
        }
    }

    /// Training windows (optimizer steps) per epoch with the spec's batch and BPTT length.
    pub fn windows_per_epoch(&self, spec: &Spec) -> usize {
        match self {
            TaskData::Lm(c) => (c.train.len() / spec.train.batch_size).saturating_sub(1).div_ceil(spec.train.bptt),
            TaskData::Mnist(m, _) => m.train.len().div_ceil(spec.train.batch_size),
        }
    }

    /// Softmax width: the vocabulary of a language model, 10 classes for MNIST.
    pub fn vocab(&self) -> usize {
        match self {
            TaskData::Lm(c) => c.vocab(),
            TaskData::Mnist(..) => 10,
        }
    }
}

/// Pixels of images `idx` as a (784·B, 1) time-major column (row t·B + b = pixel order[t] of
/// image b, scaled to [0, 1]) and their labels.
pub fn mnist_batch(set: &MnistSplit, idx: &[usize], order: &[usize]) -> (Array2<f32>, Vec<u32>) {
    let b = idx.len();
    let mut x = Array2::zeros((PIXELS * b, 1));
    for (t, &p) in order.iter().enumerate() {
        for (j, &i) in idx.iter().enumerate() {
            x[[t * b + j, 0]] = set.images[i * PIXELS + p] as f32 / 255.0;
        }
    }
    (x, idx.iter().map(|&i| set.labels[i] as u32).collect())
}
