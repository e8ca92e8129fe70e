//! Datasets: language-model corpora (PTB word/char, War and Peace, text8), MNIST, and the
//! batching that turns them into BPTT windows.

pub mod batch;
pub mod corpus;
pub mod mnist;
pub mod task;

pub use batch::Streams;
pub use corpus::Corpus;
pub use mnist::Mnist;
pub use task::TaskData;
