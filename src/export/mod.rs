//! A trained model in other forms: the packed 1- and 2-bit file (`packed`).

pub mod packed;
