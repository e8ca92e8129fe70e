//! MNIST from the four IDX files, validated: magic numbers, dimensions, file sizes, labels.
//! train = the first 50,000 training images, valid = the last 10,000, test = the official 10,000.

use std::path::Path;

use crate::bail;
use crate::error::Result;
use crate::spec::Task;

pub const PIXELS: usize = 784;

#[derive(Clone, Debug)]
pub struct MnistSplit {
    /// n × 784 pixels, row-major, 0..=255.
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl MnistSplit {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    fn range(&self, from: usize, to: usize) -> MnistSplit {
        MnistSplit { images: self.images[from * PIXELS..to * PIXELS].to_vec(), labels: self.labels[from..to].to_vec() }
    }
}

#[derive(Clone, Debug)]
pub struct Mnist {
    pub train: MnistSplit,
    pub valid: MnistSplit,
    pub test: MnistSplit,
}

impl Mnist {
    pub fn load(dir: &Path) -> Result<Mnist> {
        let d = dir.join("mnist");
        let train_x = read_idx(&d.join("train-images-idx3-ubyte"), 0x803, 60_000)?;
        let train_y = read_idx(&d.join("train-labels-idx1-ubyte"), 0x801, 60_000)?;
        let test_x = read_idx(&d.join("t10k-images-idx3-ubyte"), 0x803, 10_000)?;
        let test_y = read_idx(&d.join("t10k-labels-idx1-ubyte"), 0x801, 10_000)?;
        let full = MnistSplit { images: train_x, labels: train_y };
        Ok(Mnist {
            train: full.range(0, 50_000),
            valid: full.range(50_000, 60_000),
            test: MnistSplit { images: test_x, labels: test_y },
        })
    }
}

/// Read one IDX file: big-endian magic (0x801 labels, 0x803 28×28 images), then the
/// dimensions, then exactly that many bytes.
pub fn read_idx(path: &Path, magic: u32, count: usize) -> Result<Vec<u8>> {
    let bytes = crate::data::corpus::read(Task::SeqMnist, path)?;
    let p = path.display();
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
    let header = if magic == 0x803 { 16 } else { 8 };
    if bytes.len() < header {
        bail!("{p}: {} bytes is shorter than an IDX header; the file is truncated", bytes.len());
    }
    if be(0) as u32 != magic {
        bail!(
            "{p}: IDX magic number is {:#010x}, expected {magic:#010x}; not an MNIST {} file",
            be(0),
            if magic == 0x803 { "image" } else { "label" }
        );
    }
    if be(4) != count {
        bail!("{p}: header says {} items, expected {count}", be(4));
    }
    let item = if magic == 0x803 {
        if be(8) != 28 || be(12) != 28 {
            bail!("{p}: images are {}×{}, expected 28×28", be(8), be(12));
        }
        PIXELS
    } else {
        1
    };
    let want = header + count * item;
    if bytes.len() != want {
        bail!("{p}: {} bytes, expected {want}; the file is truncated or corrupt", bytes.len());
    }
    let body = bytes[header..].to_vec();
    if magic == 0x801
        && let Some(i) = body.iter().position(|&l| l > 9)
    {
        bail!("{p}: label {i} is {}, expected 0..=9", body[i]);
    }
    Ok(body)
}
