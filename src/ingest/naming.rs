//! File names → run and volume index.
//!
//! In: a file name (no folder) and the accepted suffixes. Out: whether the
//! suffix is accepted and, if so, the [`VolumeKey`] the name encodes plus
//! the first index a run of such names starts at.

use regex::Regex;

use crate::types::messages::VolumeKey;

use super::IngestError;

/// What a name means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Run and volume index.
    pub key: VolumeKey,
    /// The index the first volume of a run of such names carries.
    pub first_index: u32,
    /// Whether the run number is in the name (not the default run 1).
    pub run_from_name: bool,
}

/// One naming rule: a regex with a `vol` group (and usually `run`).
#[derive(Debug, Clone)]
struct Rule {
    re: Regex,
    /// Match against the name without its suffix rather than the whole name.
    on_stem: bool,
    first_index: u32,
}

impl Rule {
    fn new(pattern: &str, on_stem: bool, first_index: u32) -> Result<Rule, IngestError> {
        let re = Regex::new(pattern)
            .map_err(|e| IngestError::Config(format!("naming pattern {pattern:?}: {e}")))?;
        if !re.capture_names().any(|n| n == Some("vol")) {
            return Err(IngestError::Config(format!(
                "naming pattern {pattern:?} has no named group `vol` (write (?P<vol>\\d+))"
            )));
        }
        Ok(Rule {
            re,
            on_stem,
            first_index,
        })
    }

    fn parse(&self, name: &str, stem: &str) -> Option<Parsed> {
        let caps = self.re.captures(if self.on_stem { stem } else { name })?;
        let index = caps.name("vol")?.as_str().parse().ok()?;
        let run_from_name = caps.name("run").is_some();
        let run = match caps.name("run") {
            Some(m) => m.as_str().parse().ok()?,
            None => 1,
        };
        Some(Parsed {
            key: VolumeKey { run, index },
            first_index: self.first_index,
            run_from_name,
        })
    }
}

const BIDS: &str = r"run-(?P<run>\d+)_(?:.*_)?vol-(?P<vol>\d+)";
const SIEMENS: &str = r"^\d+_(?P<run>\d+)_(?P<vol>\d+)\.";
const TRAILING: &str = r"(?P<vol>\d+)$";

/// The configured naming rule(s), tried in order.
#[derive(Debug, Clone)]
pub struct Naming {
    rules: Vec<Rule>,
}

impl Naming {
    /// `"auto"`, `"bids"`, `"siemens"` or a regex with named groups.
    pub fn from_config(spec: &str) -> Result<Naming, IngestError> {
        let rules = match spec.trim() {
            "bids" => vec![Rule::new(BIDS, false, 0)?],
            "siemens" => vec![Rule::new(SIEMENS, false, 1)?],
            "auto" => vec![
                Rule::new(BIDS, false, 0)?,
                Rule::new(SIEMENS, false, 1)?,
                // Scanner exporters that just number files count from 1.
                Rule::new(TRAILING, true, 1)?,
            ],
            custom => vec![Rule::new(custom, false, 0)?],
        };
        Ok(Naming { rules })
    }

    /// Key of a file name whose suffix has been accepted (`stem` is the
    /// name without that suffix); `None` when no rule matches or a number
    /// does not fit in `u32`.
    pub fn parse(&self, name: &str, stem: &str) -> Option<Parsed> {
        self.rules.iter().find_map(|r| r.parse(name, stem))
    }
}

/// The accepted suffix `name` ends with (case-insensitive), longest first.
pub fn accepted_suffix<'a>(name: &str, suffixes: &'a [String]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    suffixes
        .iter()
        .filter(|s| lower.ends_with(&s.to_ascii_lowercase()) && name.len() > s.len())
        .max_by_key(|s| s.len())
        .map(|s| s.as_str())
}

/// Whether a file with accepted suffix `suffix` is DICOM (anything but
/// NIfTI's `.nii` / `.nii.gz`).
pub fn is_dicom_suffix(suffix: &str) -> bool {
    let s = suffix.to_ascii_lowercase();
    !(s.ends_with(".nii") || s.ends_with(".nii.gz"))
}

/// Whether `name` has no extension, as DICOM exports often do: no dot at
/// all (`IM0001`), or only digits and dots after the first (a UID such as
/// `1.3.12.2.1107.5.2.43.67093.2022071112091721428903937`). Hidden names
/// (a leading dot, like writers' temporary files) never qualify.
pub fn is_extensionless(name: &str) -> bool {
    if name.is_empty() || name.starts_with('.') {
        return false;
    }
    match name.find('.') {
        None => true,
        Some(i) => {
            name[i..].bytes().all(|b| b == b'.' || b.is_ascii_digit()) && !name.ends_with('.')
        }
    }
}

/// The extension to mention when a file is ignored for its suffix:
/// everything from the first dot after any leading dots, so `a.tar.gz`
/// gives `.tar.gz`, `.DS_Store` gives `(none)`.
pub fn extension_of(name: &str) -> String {
    let trimmed = name.trim_start_matches('.');
    match trimmed.find('.') {
        Some(i) => trimmed[i..].to_ascii_lowercase(),
        None => "(none)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(run: u32, index: u32) -> VolumeKey {
        VolumeKey { run, index }
    }

    fn parse(n: &Naming, name: &str) -> Option<Parsed> {
        let suffixes = vec![".nii".to_string(), ".nii.gz".to_string()];
        let s = accepted_suffix(name, &suffixes)?;
        n.parse(name, &name[..name.len() - s.len()])
    }

    #[test]
    fn bids_names_parse_anywhere_in_the_name() {
        let n = Naming::from_config("bids").unwrap();
        let p = parse(&n, "run-01_vol-0012.nii.gz").unwrap();
        assert_eq!(p.key, key(1, 12));
        assert_eq!(p.first_index, 0);
        assert_eq!(
            parse(&n, "run-01_vol-0012_dup.nii.gz").unwrap().key,
            key(1, 12)
        );
        assert_eq!(
            parse(&n, "sub-01_task-rest_run-03_echo-1_vol-0007_bold.nii")
                .unwrap()
                .key,
            key(3, 7)
        );
        assert_eq!(parse(&n, "001_000007_000012.nii"), None);
        assert_eq!(parse(&n, "run-01_vol-99999999999.nii"), None);
    }

    #[test]
    fn siemens_names_are_session_series_volume() {
        let n = Naming::from_config("siemens").unwrap();
        let p = parse(&n, "001_000007_000012.nii").unwrap();
        assert_eq!(p.key, key(7, 12));
        assert_eq!(p.first_index, 1);
        assert_eq!(parse(&n, "x001_000007_000012.nii"), None);
    }

    #[test]
    fn auto_tries_presets_then_a_trailing_number() {
        let n = Naming::from_config("auto").unwrap();
        assert_eq!(parse(&n, "run-02_vol-0003.nii").unwrap().key, key(2, 3));
        assert_eq!(
            parse(&n, "001_000004_000005.nii.gz").unwrap().key,
            key(4, 5)
        );
        let p = parse(&n, "fMRI_scan_0042.nii").unwrap();
        assert_eq!((p.key, p.first_index), (key(1, 42), 1));
        assert_eq!(parse(&n, "notes.nii"), None);
        assert_eq!(parse(&n, "readme.txt"), None);
    }

    #[test]
    fn custom_regex_needs_a_vol_group() {
        let n = Naming::from_config(r"^s(?P<run>\d+)-(?P<vol>\d+)\.nii$").unwrap();
        assert_eq!(parse(&n, "s4-17.nii").unwrap().key, key(4, 17));
        let n = Naming::from_config(r"img(?P<vol>\d+)").unwrap();
        assert_eq!(parse(&n, "img17.nii").unwrap().key, key(1, 17));
        assert!(Naming::from_config(r"img(\d+)").is_err());
        assert!(Naming::from_config(r"img(?P<vol>\d+").is_err());
    }

    #[test]
    fn suffixes_are_case_insensitive_and_longest_wins() {
        let s = vec![".nii".to_string(), ".nii.gz".to_string()];
        assert_eq!(accepted_suffix("a.NII.GZ", &s), Some(".nii.gz"));
        assert_eq!(accepted_suffix("a.nii", &s), Some(".nii"));
        assert_eq!(accepted_suffix("a.nii.part", &s), None);
        assert_eq!(accepted_suffix(".nii", &s), None);
        assert_eq!(extension_of("a.tmp"), ".tmp");
        assert_eq!(extension_of("scan.nii.part"), ".nii.part");
        assert_eq!(extension_of(".DS_Store"), "(none)");
        assert_eq!(extension_of("README"), "(none)");
    }

    #[test]
    fn dicom_names_are_told_apart() {
        assert!(is_dicom_suffix(".dcm") && is_dicom_suffix(".IMA") && is_dicom_suffix(""));
        assert!(!is_dicom_suffix(".nii") && !is_dicom_suffix(".NII.GZ"));
        for yes in ["IM0001", "MR.1.3.12.2.1107.5", "1.3.12.2.1107.5.2.43.67093"] {
            assert!(is_extensionless(yes), "{yes}");
        }
        for no in [".DS_Store", ".IM0001.tmp", "a.txt", "scan.dcm", "1.3."] {
            assert!(!is_extensionless(no), "{no}");
        }
    }
}
