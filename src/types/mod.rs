//! The values that cross stage boundaries, and nothing that acts on them.
//!
//! Every other module may import these; these import nothing else of the
//! crate (tests/architecture.rs checks it), so a stage's message contract
//! can be read here without reading any stage.
//!
//! - [`volume`]: a 3-D image on its voxel grid (the affine, the voxels);
//! - [`mask`]: the session mask and its voxel order (`np.where` order);
//! - [`events`]: one task event of a run;
//! - [`transform`]: rigid maps, MCFLIRT-convention motion parameters, FD;
//! - [`key`]: which trial ([`key::TrialKey`]); which volume is
//!   [`messages::VolumeKey`];
//! - [`messages`]: what ingest, realign, the GLM and decode send.

pub mod events;
pub mod key;
pub mod mask;
pub mod messages;
pub mod transform;
pub mod volume;
