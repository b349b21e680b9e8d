//! Decoding: each trial's beta into a retrieval and a reconstruction, by
//! ONNX graphs run in process.
//!
//! In: [`crate::types::messages::TrialBeta`]s. Out: retrieval top-k at once, a
//! reconstructed image after, per-graph and per-step timings.
//!
//! - [`manifest`]: the model and subject folders' TOML manifests.
//! - [`runtime`]: ONNX Runtime loaded from PyPI's wheel; checked graphs.
//! - [`sampler`]: DDIM, DDPM and Euler loops around one-step graphs.
//! - [`retrieval`]: top-k cosine against the candidate bank.
//! - [`models`]: the loaded folders as a fast path and a reconstructor.
//! - [`schedule`]: queue / keep-latest / skip when trials outrun the worker.
//! - [`stage`]: the pipeline stage tying them together.
//! - [`check`]: `boldstream models check`.

pub mod check;
pub mod error;
pub mod image;
pub mod manifest;
pub mod models;
pub mod retrieval;
pub mod runtime;
pub mod sampler;
pub mod schedule;
pub mod stage;
pub mod tensor;

pub use error::ModelError;

/// The ONNX Runtime minor version this build's API level needs (1.31).
pub const ORT_MINOR: u32 = ort::MINOR_VERSION;

/// The PyPI package versions the README's set-up installs.
pub const ORT_PYPI: &str = "1.31.1";
pub use stage::{DecodeConfig, DecodeStage};
