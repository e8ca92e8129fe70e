//! Batching for language models: the text is cut into `batch` contiguous streams, stored
//! time-major so that a BPTT window's inputs and targets are contiguous slices with row
//! n = t·B + b (the layout every layer uses).

use crate::bail;
use crate::error::Result;

#[derive(Clone, Debug)]
pub struct Streams {
    /// data[i·batch + b] = token i of stream b.
    data: Vec<u32>,
    pub batch: usize,
    /// Tokens per stream.
    pub len: usize,
}

impl Streams {
    /// Cut `tokens` into `batch` streams. `source` names the file and `key` the batch-size
    /// field, for the message when there are too few tokens.
    pub fn new(tokens: &[u32], batch: usize, source: &str, key: &str) -> Result<Streams> {
        let len = tokens.len() / batch;
        if len < 2 {
            bail!(
                "{source}: {} tokens cannot fill {batch} streams of at least 2 tokens ({key} = {batch}); the file may be truncated (fetch it again), or lower {key}",
                tokens.len()
            );
        }
        let mut data = vec![0; len * batch];
        for b in 0..batch {
            for i in 0..len {
                data[i * batch + b] = tokens[b * len + i];
            }
        }
        Ok(Streams { data, batch, len })
    }

    /// (start, steps) of every window, in order: the last one is shorter if bptt does not divide.
    pub fn windows(&self, bptt: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.len - 1).step_by(bptt).map(move |s| (s, bptt.min(self.len - 1 - s)))
    }

    pub fn num_windows(&self, bptt: usize) -> usize {
        (self.len - 1).div_ceil(bptt)
    }

    /// Inputs (steps·batch) and targets (the next token of each) of one window.
    pub fn window(&self, start: usize, steps: usize) -> (&[u32], &[u32]) {
        let b = self.batch;
        (&self.data[start * b..(start + steps) * b], &self.data[(start + 1) * b..(start + 1 + steps) * b])
    }

    /// Tokens predicted per epoch.
    pub fn predicted(&self) -> usize {
        (self.len - 1) * self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_contiguous_and_time_major() {
        let toks: Vec<u32> = (0..23).collect();
        let s = Streams::new(&toks, 2, "t", "b").unwrap();
        assert_eq!(s.len, 11);
        let w: Vec<_> = s.windows(4).collect();
        assert_eq!(w, vec![(0, 4), (4, 4), (8, 2)]);
        let (x, y) = s.window(8, 2);
        assert_eq!(x, &[8, 19, 9, 20]);
        assert_eq!(y, &[9, 20, 10, 21]);
        assert!(Streams::new(&toks, 20, "t", "b").is_err());
    }
}
