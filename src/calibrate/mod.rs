//! Calibration of a new subject (being written).

pub mod onnx_graph;
pub mod reliability;
pub mod ridge;
