//! Sinks: where pipeline results go.
//!
//! In: [`PipelineEvent`]s, fanned out by the last stage's outlet to each
//! sink on its own thread (the [`crate::stage::Sink`] contract). Out: the
//! operator's terminal ([`console`]) and BIDS derivatives ([`bids`]); the
//! session store is [`crate::session::store`], and the dashboard and
//! feedback sockets are fed by the hub in [`crate::serve`].

pub mod bids;
pub mod console;
