//! Rehearsal tools, outside the daemon's production path (cargo feature
//! `tools`, on by default): a scanner simulator that writes realistic
//! exports with faults ([`simulate`]), the end-to-end demo ([`demo`]) and
//! its HTML report ([`report`]). Production modules never import these.

pub mod demo;
pub mod report;
pub mod simulate;
