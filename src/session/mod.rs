//! The session folder: its format, written, read back and repaired.
//!
//! In: pipeline events (the writer, a reliable [`crate::stage::Sink`]); a
//! folder holding an interrupted session (the reader). Out: the folder's
//! files, each committed by one file written last
//! ([`store::SessionStore`]); and, on restart, what the folder holds —
//! settled volumes, betas, decodes — with torn records cut back, so the
//! daemon continues bit-exact ([`resume::Resume`]).
//!
//! The layout is documented in docs/session-store.md; the writer and the
//! reader are the only code that knows it.

pub mod resume;
pub mod store;
