//! # lse-trainer
//!
//! VGG16-FCN8s in libtorch (crate `tch`): the network ([`fcn8s`]), checkpoints and
//! weight import ([`checkpoint`], [`pth`]), the ONNX writer ([`onnx`]), the losses and
//! LSE round ([`losses`], [`lse`]), and the trainer: settings ([`config`]), data
//! loading ([`data`]), mixed precision ([`amp`]), Adam ([`optim`]), run directories ([`run`]) and the training
//! loops ([`train`]); checked exports ([`export`], [`quantize`]) and publishing a run as
//! a self-contained model folder ([`publish`]).

pub mod amp;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod diagnostics;
pub mod export;
pub mod fcn8s;
pub mod losses;
pub mod lse;
pub mod metrics_log;
pub mod onnx;
pub mod optim;
pub mod plot;
pub mod premise;
pub mod pth;
pub mod publish;
pub mod quantize;
pub mod report;
pub mod run;
pub mod seeding;
pub mod train;
