//! The fitted adapter as an ONNX graph.
//!
//! In: a linear map (weights V × L row-major, bias L), the graph's input
//! and output names and a description. Out: the bytes of an ONNX model
//! (`output = input · W + b`, input float32 [1, V], output float32 [1, L],
//! IR version 8, opset 17) that the decoder loads like any other adapter,
//! or that model written atomically to a file.
//!
//! Only the subset of `onnx.proto` this graph needs is declared here, with
//! the field numbers of the official schema, so the output is a standard
//! ONNX file without a protobuf compiler in the build.

use std::path::{Path, PathBuf};

use prost::Message;

/// ONNX IR version written (ONNX 1.10+, read by every ONNX Runtime the
/// decoder supports).
pub const IR_VERSION: i64 = 8;

/// Default-domain opset written (MatMul-13 and Add-14 live in it).
pub const OPSET: i64 = 17;

/// Producer name in the model.
pub const PRODUCER: &str = "boldstream";

/// Initialiser and intermediate names; the caller's input and output names
/// must differ from these.
pub const WEIGHT_NAME: &str = "adapter.weight";
/// See [`WEIGHT_NAME`].
pub const BIAS_NAME: &str = "adapter.bias";
/// See [`WEIGHT_NAME`].
pub const PRODUCT_NAME: &str = "adapter.xw";

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

/// `onnx.ModelProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// Field 1.
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    /// Field 2.
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    /// Field 3.
    #[prost(string, optional, tag = "3")]
    pub producer_version: Option<String>,
    /// Field 4.
    #[prost(string, optional, tag = "4")]
    pub domain: Option<String>,
    /// Field 5.
    #[prost(int64, optional, tag = "5")]
    pub model_version: Option<i64>,
    /// Field 6.
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    /// Field 7.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Field 8.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Field 14.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `onnx.OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Field 1 (empty: the default `ai.onnx` domain).
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    /// Field 2.
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

/// `onnx.StringStringEntryProto`.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    /// Field 1.
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// Field 2.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// `onnx.GraphProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Field 1.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Field 2.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    /// Field 5.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Field 10.
    #[prost(string, optional, tag = "10")]
    pub doc_string: Option<String>,
    /// Field 11.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Field 12.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Field 13.
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto` (subset: no attributes).
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Field 1.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Field 2.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Field 3.
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    /// Field 4.
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    /// Field 6.
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    /// Field 7.
    #[prost(string, optional, tag = "7")]
    pub domain: Option<String>,
}

/// `onnx.TensorProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// Field 1 (proto2 `repeated int64`: unpacked).
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// Field 2 (`TensorProto.DataType`).
    #[prost(int32, optional, tag = "2")]
    pub data_type: Option<i32>,
    /// Field 4.
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// Field 8.
    #[prost(string, optional, tag = "8")]
    pub name: Option<String>,
    /// Field 9: little-endian element bytes.
    #[prost(bytes = "vec", optional, tag = "9")]
    pub raw_data: Option<Vec<u8>>,
    /// Field 12.
    #[prost(string, optional, tag = "12")]
    pub doc_string: Option<String>,
}

/// `onnx.ValueInfoProto` (subset).
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Field 1.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Field 2.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// Field 3.
    #[prost(string, optional, tag = "3")]
    pub doc_string: Option<String>,
}

/// `onnx.TypeProto` (subset: tensors).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// The `value` oneof (field 1: `tensor_type`).
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
    /// Field 6.
    #[prost(string, optional, tag = "6")]
    pub denotation: Option<String>,
}

/// Nested messages of [`TypeProto`].
pub mod type_proto {
    /// `onnx.TypeProto.Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// Field 1 (`TensorProto.DataType`).
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        /// Field 2.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }

    /// The `value` oneof.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// Field 1.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }
}

/// `onnx.TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Field 1.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// `onnx.TensorShapeProto.Dimension`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// The `value` oneof (fields 1 and 2).
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        /// Field 3.
        #[prost(string, optional, tag = "3")]
        pub denotation: Option<String>,
    }

    /// Nested types of [`Dimension`].
    pub mod dimension {
        /// The `value` oneof.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// Field 1: a fixed size.
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// Field 2: a named free size.
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

/// Why an adapter graph could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// Weights or bias do not have the declared size.
    #[error("{what}: expected {expected} values, found {found}")]
    Length {
        /// Which array.
        what: &'static str,
        /// What V and L imply.
        expected: usize,
        /// What was passed.
        found: usize,
    },
    /// V or L is zero, or the weights do not fit in one protobuf message.
    #[error("bad adapter size {voxels} × {latent}: {why}")]
    Size {
        /// V.
        voxels: usize,
        /// L.
        latent: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// NaN or infinity in the weights or bias.
    #[error("non-finite value {value} in {what} at index {index}")]
    NonFinite {
        /// Which array.
        what: &'static str,
        /// Flat index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// An input or output name that is empty or clashes.
    #[error("bad tensor name {name:?}: {why}")]
    Name {
        /// The name.
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The file could not be written.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file (or its temporary).
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn float_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    use tensor_shape_proto::{Dimension, dimension};
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
                            denotation: None,
                        })
                        .collect(),
                }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn float_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 4);
    for a in data {
        raw.extend_from_slice(&a.to_le_bytes());
    }
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(FLOAT),
        float_data: Vec::new(),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        doc_string: None,
    }
}

fn node(op: &str, inputs: [&str; 2], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("adapter_{}", op.to_lowercase())),
        op_type: Some(op.to_string()),
        doc_string: None,
        domain: Some(String::new()),
    }
}

fn check_finite(what: &'static str, data: &[f32]) -> Result<(), OnnxError> {
    match data.iter().position(|a| !a.is_finite()) {
        None => Ok(()),
        Some(index) => Err(OnnxError::NonFinite {
            what,
            index,
            value: data[index],
        }),
    }
}

fn check_name(name: &str, other: &str) -> Result<(), OnnxError> {
    let bad = |why| {
        Err(OnnxError::Name {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if [WEIGHT_NAME, BIAS_NAME, PRODUCT_NAME].contains(&name) {
        return bad("reserved for the adapter's own tensors");
    }
    if name == other {
        return bad("input and output must have different names");
    }
    Ok(())
}

/// The ONNX model of `output = input · W + b`: input float32 [1, V],
/// initialisers W [V, L] and b [L], MatMul then Add, output float32 [1, L].
pub fn linear_adapter(
    weights: &[f32],
    bias: &[f32],
    voxels: usize,
    latent: usize,
    input: &str,
    output: &str,
    doc: &str,
) -> Result<Vec<u8>, OnnxError> {
    let size_err = |why| OnnxError::Size {
        voxels,
        latent,
        why,
    };
    if voxels == 0 || latent == 0 {
        return Err(size_err("both must be at least 1"));
    }
    let count = voxels
        .checked_mul(latent)
        .ok_or(size_err("too many weights"))?;
    // Protobuf messages cannot exceed 2 GiB; larger weights would need
    // ONNX external data, which an adapter never comes near.
    if count >= (i32::MAX as usize - (1 << 20)) / 4 {
        return Err(size_err("weights exceed the 2 GiB protobuf limit"));
    }
    if weights.len() != count {
        return Err(OnnxError::Length {
            what: "weights",
            expected: count,
            found: weights.len(),
        });
    }
    if bias.len() != latent {
        return Err(OnnxError::Length {
            what: "bias",
            expected: latent,
            found: bias.len(),
        });
    }
    check_finite("weights", weights)?;
    check_finite("bias", bias)?;
    check_name(input, output)?;
    check_name(output, input)?;
    let (v, l) = (voxels as i64, latent as i64);
    let graph = GraphProto {
        node: vec![
            node("MatMul", [input, WEIGHT_NAME], PRODUCT_NAME),
            node("Add", [PRODUCT_NAME, BIAS_NAME], output),
        ],
        name: Some("boldstream_adapter".into()),
        initializer: vec![
            float_tensor(WEIGHT_NAME, &[v, l], weights),
            float_tensor(BIAS_NAME, &[l], bias),
        ],
        doc_string: None,
        input: vec![float_info(input, &[1, v])],
        output: vec![float_info(output, &[1, l])],
        value_info: vec![float_info(PRODUCT_NAME, &[1, l])],
    };
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some(PRODUCER.into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: Some(1),
        doc_string: Some(doc.to_string()),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        metadata_props: vec![
            StringStringEntryProto {
                key: Some("boldstream.role".into()),
                value: Some("adapter".into()),
            },
            StringStringEntryProto {
                key: Some("boldstream.voxels".into()),
                value: Some(voxels.to_string()),
            },
            StringStringEntryProto {
                key: Some("boldstream.latent".into()),
                value: Some(latent.to_string()),
            },
        ],
    };
    Ok(model.encode_to_vec())
}

/// [`linear_adapter`] written to `path` atomically: a temporary file in the
/// same folder, synced, then renamed over `path`, so a decoder never loads
/// a half-written adapter and a failed write leaves any old one intact.
#[allow(clippy::too_many_arguments)]
pub fn write_linear_adapter(
    path: &Path,
    weights: &[f32],
    bias: &[f32],
    voxels: usize,
    latent: usize,
    input: &str,
    output: &str,
    doc: &str,
) -> Result<(), OnnxError> {
    let bytes = linear_adapter(weights, bias, voxels, latent, input, output, doc)?;
    crate::formats::atomic_write(path, &bytes).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_prost() {
        let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let b = [0.25f32, -0.5];
        let bytes = linear_adapter(&w, &b, 3, 2, "betas", "latent", "test").unwrap();
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(m.ir_version, Some(IR_VERSION));
        assert_eq!(m.opset_import[0].version, Some(OPSET));
        let g = m.graph.unwrap();
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(ops, ["MatMul", "Add"]);
        assert_eq!(g.initializer[0].dims, [3, 2]);
        let raw = g.initializer[0].raw_data.clone().unwrap();
        let back: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, w);
        assert_eq!(g.input[0].name.as_deref(), Some("betas"));
        assert_eq!(g.output[0].name.as_deref(), Some("latent"));
    }

    #[test]
    fn rejects_bad_input() {
        let w = [0f32; 6];
        let b = [0f32; 2];
        assert!(matches!(
            linear_adapter(&w, &b, 3, 3, "a", "b", ""),
            Err(OnnxError::Length {
                what: "weights",
                ..
            })
        ));
        assert!(matches!(
            linear_adapter(&w, &b[..1], 3, 2, "a", "b", ""),
            Err(OnnxError::Length { what: "bias", .. })
        ));
        let mut wn = w;
        wn[4] = f32::NAN;
        assert!(matches!(
            linear_adapter(&wn, &b, 3, 2, "a", "b", ""),
            Err(OnnxError::NonFinite { index: 4, .. })
        ));
        assert!(matches!(
            linear_adapter(&w, &b, 3, 2, "a", "a", ""),
            Err(OnnxError::Name { .. })
        ));
        assert!(matches!(
            linear_adapter(&w, &b, 3, 2, WEIGHT_NAME, "b", ""),
            Err(OnnxError::Name { .. })
        ));
    }
}
