//! boldstream — a real-time fMRI decoding daemon.
//!
//! The data path is a chain of stages, each on its own thread, talking over
//! bounded channels with typed messages (docs/architecture.md):
//!
//! ```text
//! export dir ─watch─▶ ingest ─▶ realign ─▶ glm ─▶ decode ─▶ sinks (session store, console, BIDS, hub → dashboard/protocol)
//! ```
//!
//! - [`types`]: the values that cross stage boundaries (imports nothing else);
//! - [`formats`]: every file format (NIfTI, DICOM, npy, PNG, .par, events.tsv);
//! - [`stage`]: the Stage and Sink contracts, outlets and inlets;
//! - [`pipeline`]: the wiring; [`config`]: its settings;
//! - stages: [`ingest`], [`realign`], [`glm`], [`decode`];
//! - sinks: [`session`] (the session folder), [`sinks`], [`serve`];
//! - around the daemon: [`calibrate`], [`service`], [`cli`] (the
//!   command-line edge), and behind the `tools` feature [`tools`].

pub mod calibrate;
pub mod cli;
pub mod config;
pub mod decode;
pub mod formats;
pub mod glm;
pub mod ingest;
pub mod pipeline;
pub mod realign;
pub mod serve;
pub mod service;
pub mod session;
pub mod sinks;
pub mod stage;
#[cfg(feature = "tools")]
pub mod tools;
pub mod types;
