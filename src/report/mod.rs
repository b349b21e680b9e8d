//! Session report (being written).
