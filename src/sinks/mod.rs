//! Sinks: where pipeline results go.
//!
//! In: [`PipelineEvent`]s, fanned out by the pipeline to each sink on its
//! own thread. Out: the session store on disk ([`store`]), the operator's
//! terminal ([`console`]); later the dashboard and feedback sockets.

pub mod console;
pub mod image;
pub mod npy;
pub mod store;
