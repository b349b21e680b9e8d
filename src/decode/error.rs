//! Why a model folder, a subject folder or ONNX Runtime cannot be used.

use std::path::PathBuf;

use super::{ORT_MINOR, ORT_PYPI};

/// Why a model or subject folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A manifest is malformed or inconsistent.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A graph could not be loaded or run.
    #[error("{role} graph {}: {message}", path.display())]
    Graph {
        /// Its role.
        role: &'static str,
        /// The `.onnx` file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A graph's inputs or outputs disagree with the manifest.
    #[error("{role} graph {}: {tensor}: the manifest says {expected}, the graph has {found}", path.display())]
    Mismatch {
        /// Its role.
        role: &'static str,
        /// The `.onnx` file.
        path: PathBuf,
        /// Which tensor (and which property).
        tensor: String,
        /// What the manifest says.
        expected: String,
        /// What the graph has.
        found: String,
    },
    /// The retrieval bank is unusable.
    #[error("retrieval bank {}: {message}", path.display())]
    Bank {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The subject's adapter does not fit the session's mask.
    #[error(
        "subject {subject}: the adapter takes {adapter} voxels but the session mask has {mask}; \
         use the subject's own mask (realign.mask) or refit the adapter"
    )]
    VoxelCount {
        /// The subject.
        subject: String,
        /// Voxels the adapter takes.
        adapter: usize,
        /// Voxels in the session mask.
        mask: usize,
    },
    /// A `[decode]` setting is out of range.
    #[error("[decode] {key} = {value}: {message}")]
    Setting {
        /// The setting.
        key: &'static str,
        /// Its value, as given.
        value: String,
        /// What it must be.
        message: &'static str,
    },
    /// ONNX Runtime could not be loaded or set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Why ONNX Runtime could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// No library was found anywhere we looked.
    #[error(
        "ONNX Runtime (libonnxruntime.so) not found; looked at: {}. Install it from PyPI \
         (python3 -m venv .venv && .venv/bin/pip install onnxruntime=={ORT_PYPI}, or \
         onnxruntime-gpu=={ORT_PYPI} for CUDA) and point [decode] onnxruntime or \
         BOLDSTREAM_ORT_DYLIB at .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*",
        tried.join(", ")
    )]
    NotFound {
        /// Every place tried, with why it did not do.
        tried: Vec<String>,
    },
    /// The library is there but could not be loaded or is too old.
    #[error(
        "ONNX Runtime at {}: {message}. boldstream needs ONNX Runtime 1.{ORT_MINOR} or newer \
         (pip install onnxruntime=={ORT_PYPI})",
        path.display()
    )]
    Load {
        /// The library.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A second, different library was asked for after one was loaded.
    #[error(
        "ONNX Runtime is already loaded from {} in this process; cannot switch to {}",
        loaded.display(),
        wanted.display()
    )]
    AlreadyLoaded {
        /// The one in use.
        loaded: PathBuf,
        /// The one asked for.
        wanted: PathBuf,
    },
    /// A GPU was required and is not usable.
    #[error("{0}")]
    GpuRequired(String),
}
