//! Readers of run directories: the paper-layout tables (`table`) and the diagnostic figures
//! (`plot`).

pub mod plot;
pub mod table;
