//! The command-line edge: argument structs (clap) and the commands that
//! print and return `anyhow` errors with context. Nothing else in the
//! library uses clap or anyhow (tests/architecture.rs checks it); the
//! modules below turn typed library errors into messages for a person.
//!
//! - [`check`]: `boldstream check`, everything `run` will use, read-only;
//! - [`calibrate`]: `boldstream calibrate`;
//! - [`glm`]: `boldstream glm`, offline betas over a recorded series.

pub mod calibrate;
pub mod check;
pub mod glm;
