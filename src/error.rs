//! One error type for the crate. Every message names the file, the field or path, and what is
//! allowed; `main` prints it on one line and exits non-zero.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub String);

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// `bail!("...")` returns early with a formatted [`Error`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::new(format!($($arg)*))) };
}

/// Attach a path to an I/O error: "data/ptb/ptb.train.txt: No such file or directory".
pub fn io_err(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::new(format!("{}: {}", path.display(), e))
}
