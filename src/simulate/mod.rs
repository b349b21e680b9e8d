//! Scanner simulator (skeleton).
