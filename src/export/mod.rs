//! A trained model in other forms: the packed 1- and 2-bit file (`packed`), and a PyTorch
//! state dict for nn.LSTM / nn.GRU (`torch`).

pub mod packed;
pub mod torch;
