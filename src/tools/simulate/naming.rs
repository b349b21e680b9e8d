//! File names the simulated exporter uses, and parsing them back.
//!
//! In: session number, run, volume index (0-based within the run), whether
//! the file is a duplicate and whether it is gzipped. Out: a file name; or,
//! from a name, the run and 0-based index it stands for.
//!
//! - [`Naming::Bids`]: `run-01_vol-0012.nii.gz`; the volume number is the
//!   0-based index within the run.
//! - [`Naming::Siemens`]: `001_000007_000013.nii` — session, series (= run)
//!   and volume, 3/6/6 digits; the volume number is 1-based, as the
//!   scanner's real-time export numbers it, so index 12 is `000013`.
//!
//! Duplicates carry `_dup` before the extension
//! (`run-01_vol-0012_dup.nii.gz`) and still parse to the same run/index.

use serde::{Deserialize, Serialize};

use crate::types::messages::VolumeKey;

/// A file-naming convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum Naming {
    /// `run-01_vol-0012.nii.gz` (0-based volume).
    #[default]
    Bids,
    /// `001_000007_000013.nii` (session_series_volume, 1-based volume).
    Siemens,
}

/// What a file name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedName {
    /// Run and 0-based index within the run.
    pub key: VolumeKey,
    /// Session number (Siemens names only).
    pub session: Option<u32>,
    /// Whether the name has the `_dup` suffix.
    pub duplicate: bool,
    /// `.nii.gz` rather than `.nii`.
    pub gzip: bool,
}

const DUP: &str = "_dup";

impl Naming {
    /// The file name of `key`'s volume.
    pub fn file_name(self, session: u32, key: VolumeKey, duplicate: bool, gzip: bool) -> String {
        let stem = match self {
            Naming::Bids => format!("run-{:02}_vol-{:04}", key.run, key.index),
            Naming::Siemens => format!("{:03}_{:06}_{:06}", session, key.run, key.index + 1),
        };
        let dup = if duplicate { DUP } else { "" };
        let ext = if gzip { ".nii.gz" } else { ".nii" };
        format!("{stem}{dup}{ext}")
    }

    /// Parse a name in either convention; `None` for anything else
    /// (including the writer's hidden temporary names).
    pub fn parse(name: &str) -> Option<ParsedName> {
        let (stem, gzip) = if let Some(s) = name.strip_suffix(".nii.gz") {
            (s, true)
        } else {
            (name.strip_suffix(".nii")?, false)
        };
        let (stem, duplicate) = match stem.strip_suffix(DUP) {
            Some(s) => (s, true),
            None => (stem, false),
        };
        let digits = |s: &str| -> Option<u32> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        if let Some(rest) = stem.strip_prefix("run-") {
            let (run, vol) = rest.split_once("_vol-")?;
            return Some(ParsedName {
                key: VolumeKey {
                    run: digits(run)?,
                    index: digits(vol)?,
                },
                session: None,
                duplicate,
                gzip,
            });
        }
        let mut parts = stem.split('_');
        let (s, r, v) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(ParsedName {
            key: VolumeKey {
                run: digits(r)?,
                index: digits(v)?.checked_sub(1)?,
            },
            session: Some(digits(s)?),
            duplicate,
            gzip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let key = VolumeKey { run: 7, index: 12 };
        for naming in [Naming::Bids, Naming::Siemens] {
            for dup in [false, true] {
                for gz in [false, true] {
                    let n = naming.file_name(1, key, dup, gz);
                    let p = Naming::parse(&n).unwrap();
                    assert_eq!((p.key, p.duplicate, p.gzip), (key, dup, gz), "{n}");
                }
            }
        }
        assert_eq!(
            Naming::Bids.file_name(1, key, true, true),
            "run-07_vol-0012_dup.nii.gz"
        );
        assert_eq!(
            Naming::Siemens.file_name(1, key, false, false),
            "001_000007_000013.nii"
        );
        for junk in [
            ".run-01_vol-0001.nii.gz.tmp",
            "001_000007_000000.nii",
            "run-01.nii",
            "a_b_c.nii",
            "faults.tsv",
        ] {
            assert!(Naming::parse(junk).is_none(), "{junk}");
        }
    }
}
