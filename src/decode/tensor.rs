//! Tensor descriptions shared by the manifests and the runtime: element
//! type, name and shape, and how shapes compare.

use serde::{Deserialize, Serialize};

/// Element types the decode stage feeds and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit float.
    Float32,
    /// 64-bit signed integer (timesteps).
    Int64,
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::Float32 => "float32",
            Dtype::Int64 => "int64",
        })
    }
}

/// One input or output of a graph: name, shape (`-1` = free) and dtype.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The name in the graph.
    pub name: String,
    /// Dimensions; `-1` where the graph leaves one free.
    pub shape: Vec<i64>,
    /// Element type.
    pub dtype: Dtype,
}

impl TensorSpec {
    /// Elements, counting a free dimension as 1 (the batch).
    pub fn len(&self) -> usize {
        self.shape.iter().map(|&d| d.max(1) as usize).product()
    }

    /// True for a shape with a zero dimension.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The concrete shape fed to the graph (free dimensions as 1).
    pub fn concrete(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d.max(1)).collect()
    }

    pub(crate) fn float(name: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
            dtype: Dtype::Float32,
        }
    }
}

/// Shape display as the manifest writes it.
pub fn shape_str(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// Two shapes agree when their ranks are equal and every dimension is
/// equal or free (`-1`) on either side.
pub fn shapes_agree(a: &[i64], b: &[i64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| x == y || x < 0 || y < 0)
}
