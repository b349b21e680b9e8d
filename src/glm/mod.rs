//! GLM: single-trial response patterns (betas) by least squares separate.
//!
//! In: realigned, masked volumes in order and the trial schedule. Out: one
//! beta per voxel for each trial, as nilearn's FirstLevelModel would
//! estimate it on the same design.

pub mod design;
pub mod feedback;
pub mod hrf;
pub mod model;
pub mod normalize;
pub mod offline;
pub mod run;
pub mod stage;
