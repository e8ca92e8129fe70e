//! Readers of run directories: the paper-layout tables (`table`), the seed spread of each cell
//! (`spread`) and the diagnostic figures (`plot`).

pub mod plot;
pub mod spread;
pub mod table;
