//! GLM: single-trial response patterns (betas) by least squares separate.
//!
//! In: realigned, masked volumes in order and the trial schedule. Out: one
//! beta per voxel for each trial, as nilearn's FirstLevelModel would
//! estimate it on the same design.

pub mod buffer;
pub mod design;
pub mod feedback;
pub mod hrf;
pub mod live;
pub mod model;
pub mod normalize;
pub mod offline;
pub mod run;
pub mod spec;
pub mod stage;

/// A setting's value is not one of the names it takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} '{value}': expected {expected}")]
pub struct UnknownName {
    /// The setting.
    pub what: &'static str,
    /// The value given.
    pub value: String,
    /// The names it takes.
    pub expected: &'static str,
}

/// `FromStr` for a setting with a few lowercase names.
macro_rules! names {
    ($ty:ty, $what:literal, $expected:literal, { $($name:literal => $v:expr),+ $(,)? }) => {
        impl std::str::FromStr for $ty {
            type Err = $crate::glm::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($v),)+
                    other => Err($crate::glm::UnknownName {
                        what: $what,
                        value: other.to_string(),
                        expected: $expected,
                    }),
                }
            }
        }
    };
}

names!(model::NoiseModel, "noise model", "ols or ar1", {
    "ols" => model::NoiseModel::Ols,
    "ar1" => model::NoiseModel::Ar1,
});
names!(model::SignalScaling, "signal scaling", "percent or none", {
    "percent" => model::SignalScaling::Percent,
    "none" => model::SignalScaling::None,
});
names!(hrf::HrfModel, "HRF", "glover or spm", {
    "glover" => hrf::HrfModel::Glover,
    "spm" => hrf::HrfModel::Spm,
});
