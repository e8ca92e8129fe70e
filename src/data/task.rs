//! The data of a task, loaded once: a language-model corpus or MNIST with its pixel order.

use std::path::Path;

use ndarray::Array2;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_pcg::Pcg64Mcg;

use crate::data::mnist::{MnistSplit, PIXELS};
use crate::data::{Corpus, Mnist};
use crate::error::Result;
use crate::spec::{Spec, Task};

pub enum TaskData {
    Lm(Corpus),
    /// MNIST with the pixel order (identity, or pmnist's fixed permutation).
    Mnist(Mnist, Vec<usize>),
}

impl TaskData {
    pub fn load(spec: &Spec) -> Result<TaskData> {
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
