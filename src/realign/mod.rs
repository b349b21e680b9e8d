//! Realign: rigid (6-DOF) motion correction of each volume to the session reference.
//!
//! In: decoded volumes. Out: MCFLIRT-convention motion parameters, framewise
//! displacement, DVARS and the volume resampled once onto the reference (or
//! calibration) grid.
//!
//! Split the way ITK splits registration: [`transform`] (rigid maps and the
//! `.par` convention), interpolator, metric and optimiser.

pub mod transform;
