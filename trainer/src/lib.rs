//! # lse-trainer
//!
//! VGG16-FCN8s in libtorch (crate `tch`): the network ([`fcn8s`]), checkpoints and
//! weight import ([`checkpoint`], [`pth`]), and the ONNX writer ([`onnx`]).

pub mod checkpoint;
pub mod cli;
pub mod fcn8s;
pub mod losses;
pub mod lse;
pub mod onnx;
pub mod pth;
