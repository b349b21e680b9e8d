//! Image file formats the scanner side produces.
//!
//! In: bytes of one exported file. Out: [`Volume`](crate::volume::Volume)s,
//! or a typed error saying what is wrong with the file.

pub mod dicom;
pub mod nifti;
