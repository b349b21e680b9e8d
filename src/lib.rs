//! boldstream — a real-time fMRI decoding daemon.
//!
//! The data path is a chain of stages, each on its own thread, talking over
//! bounded channels with typed messages:
//!
//! ```text
//! export dir ─watch─▶ ingest ─▶ realign ─▶ buffer ─▶ (GLM, decode) ─▶ sinks
//! ```
//!
//! - [`formats`]: NIfTI and DICOM (Siemens mosaic, enhanced, single-slice)
//!   decoding into [`volume::Volume`]s.
//! - [`realign`]: rigid motion correction, MCFLIRT-convention parameters.
//! - [`simulate`]: a scanner simulator with known motion and fault injection.

pub mod buffer;
pub mod calibrate;
pub mod config;
pub mod decode;
pub mod demo;
pub mod events;
pub mod formats;
pub mod glm;
pub mod ingest;
pub mod live;
pub mod mask;
pub mod messages;
pub mod pipeline;
pub mod preflight;
pub mod realign;
pub mod report;
pub mod resume;
pub mod serve;
pub mod service;
pub mod simulate;
pub mod sinks;
pub mod stage;
pub mod volume;
