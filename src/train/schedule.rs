//! The learning-rate schedules of docs/SPEC.md §3. Two rates move: the latent recurrent
//! weights' (W_x, W_h of every layer, which the bc/tc recipes scale and the latent decay moves)
//! and everyone else's.

use serde::{Deserialize, Serialize};

use crate::spec::{Schedule, TrainSpec};

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LearningRates {
    /// The latent recurrent weights' lr.
    pub latent: f64,
    /// Every other parameter's.
    pub other: f64,
}

impl LearningRates {
    pub fn initial(t: &TrainSpec) -> Self {
        LearningRates { latent: t.lr * t.latent_lr_scale, other: t.lr }
    }

    /// Move the rates after epoch `epoch` has been evaluated (`improved`: its validation loss
    /// is the best so far).
    pub fn end_of_epoch(&mut self, t: &TrainSpec, epoch: usize, improved: bool) {
        match t.schedule {
            Schedule::LatentDecay => {
                if epoch >= t.lr_decay_start {
                    self.latent *= t.lr_decay;
                }
            }
            Schedule::Plateau => {
                if !improved {
                    self.latent /= t.plateau_factor;
                    self.other /= t.plateau_factor;
                }
            }
            Schedule::Geometric => {
                self.latent *= t.lr_decay;
                self.other *= t.lr_decay;
            }
            Schedule::Constant => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Spec, Task};

    #[test]
    fn each_schedule_by_hand() {
        let mut t = Spec::defaults(Task::PtbChar).train;
        let mut lr = LearningRates::initial(&t);
        lr.end_of_epoch(&t, 9, true);
        assert_eq!(lr, LearningRates { latent: 0.002, other: 0.002 }, "no decay before epoch 10");
        lr.end_of_epoch(&t, 10, true);
        assert_eq!(lr, LearningRates { latent: 0.002 * 0.98, other: 0.002 });
        t.schedule = Schedule::Plateau;
        let mut lr = LearningRates::initial(&t);
        lr.end_of_epoch(&t, 1, true);
        lr.end_of_epoch(&t, 2, false);
        assert_eq!(lr, LearningRates { latent: 0.0005, other: 0.0005 });
        t.schedule = Schedule::Geometric;
        t.lr_decay = 0.5;
        let mut lr = LearningRates::initial(&t);
        lr.end_of_epoch(&t, 1, true);
        assert_eq!(lr, LearningRates { latent: 0.001, other: 0.001 });
    }
}
