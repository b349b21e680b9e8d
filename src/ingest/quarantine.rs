//! Moving unusable files aside.
//!
//! In: a file in the export folder and why it is unusable. Out: the file
//! moved into the quarantine folder under a name that never overwrites an
//! earlier quarantined file, and `<moved name>.reason.txt` beside it saying
//! what was wrong, when, after how many attempts, its size and its run and
//! volume.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::types::messages::VolumeKey;

/// What goes into the reason file.
#[derive(Debug, Clone)]
pub struct Details<'a> {
    /// Why the file is unusable.
    pub reason: &'a str,
    /// Decode attempts made.
    pub attempts: u32,
    /// Size in bytes, when known.
    pub size: Option<u64>,
    /// Run and volume from the name.
    pub key: Option<VolumeKey>,
    /// When the file was first noticed.
    pub first_seen: Option<SystemTime>,
}

/// Where the file ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The quarantined copy.
    pub to: PathBuf,
    /// True when the original could be copied but not removed (read-only
    /// export folder): it is still where it was.
    pub original_left: bool,
}

/// Move `file` into `dir` and write its reason file. `suffix` is the part
/// of the name kept at the end when a number has to be inserted to avoid
/// overwriting an earlier file (`a.nii.gz` → `a.1.nii.gz`).
///
/// Errors: the quarantine folder cannot be created, or the file can be
/// neither renamed nor copied (`NotFound` when it vanished). A reason file
/// that cannot be written is logged, not an error: the move is what
/// protects the run.
pub fn move_aside(dir: &Path, file: &Path, suffix: &str, details: &Details) -> io::Result<Moved> {
    std::fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".into());
    let to = unique_destination(dir, &name, suffix);
    let original_left = match std::fs::rename(file, &to) {
        Ok(()) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
        // Typically another device (quarantine on a local disk, export on a
        // share): rename cannot cross it, a copy can.
        Err(rename_err) => {
            std::fs::copy(file, &to).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("rename failed ({rename_err}), and so did copying ({e})"),
                )
            })?;
            match std::fs::remove_file(file) {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(
                        "{}: copied to quarantine as {} but could not be removed: {e}",
                        file.display(),
                        to.display()
                    );
                    true
                }
            }
        }
    };
    let reason_path = reason_file_of(&to);
    if let Err(e) = std::fs::write(&reason_path, reason_text(file, &to, details)) {
        tracing::error!(
            "{}: could not write the quarantine reason file {}: {e}",
            file.display(),
            reason_path.display()
        );
    }
    Ok(Moved { to, original_left })
}

/// `<quarantined file>.reason.txt`.
pub fn reason_file_of(quarantined: &Path) -> PathBuf {
    let mut s = quarantined.as_os_str().to_owned();
    s.push(".reason.txt");
    PathBuf::from(s)
}

fn unique_destination(dir: &Path, name: &str, suffix: &str) -> PathBuf {
    let first = dir.join(name);
    if !taken(&first) {
        return first;
    }
    let (stem, end) = if !suffix.is_empty() && name.len() > suffix.len() {
        name.split_at(name.len() - suffix.len())
    } else {
        (name, "")
    };
    (1u64..)
        .map(|n| dir.join(format!("{stem}.{n}{end}")))
        .find(|p| !taken(p))
        .unwrap_or(first)
}

fn taken(p: &Path) -> bool {
    p.symlink_metadata().is_ok() || reason_file_of(p).symlink_metadata().is_ok()
}

fn reason_text(file: &Path, to: &Path, d: &Details) -> String {
    let mut s = String::new();
    s.push_str(&format!("file: {}\n", file.display()));
    s.push_str(&format!("moved to: {}\n", to.display()));
    s.push_str(&format!("reason: {}\n", d.reason));
    s.push_str(&format!("time: {}\n", utc(SystemTime::now())));
    if let Some(t) = d.first_seen {
        s.push_str(&format!("first seen: {}\n", utc(t)));
    }
    s.push_str(&format!("attempts: {}\n", d.attempts));
    match d.size {
        Some(n) => s.push_str(&format!("size: {n} bytes\n")),
        None => s.push_str("size: unknown\n"),
    }
    if let Some(k) = d.key {
        s.push_str(&format!("run: {}\nvolume: {}\n", k.run, k.index));
    }
    s
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, without a date-time dependency.
pub fn utc(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days → civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_123 + 3_723_000);
        assert_eq!(utc(t), "2000-02-29T01:02:03.123Z");
    }

    #[test]
    fn quarantine_never_overwrites_and_writes_reasons() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        let details = Details {
            reason: "garbage",
            attempts: 3,
            size: Some(4),
            key: Some(VolumeKey { run: 1, index: 5 }),
            first_seen: None,
        };
        let mut moved = Vec::new();
        for content in ["one", "two", "three"] {
            let f = tmp.path().join("run-01_vol-0005.nii.gz");
            std::fs::write(&f, content).unwrap();
            let m = move_aside(&q, &f, ".nii.gz", &details).unwrap();
            assert!(!m.original_left);
            assert!(!f.exists());
            assert_eq!(std::fs::read_to_string(&m.to).unwrap(), content);
            moved.push(m.to);
        }
        let names: Vec<_> = moved
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![
                "run-01_vol-0005.nii.gz",
                "run-01_vol-0005.1.nii.gz",
                "run-01_vol-0005.2.nii.gz"
            ]
        );
        let text = std::fs::read_to_string(reason_file_of(&moved[1])).unwrap();
        assert!(text.contains("reason: garbage\n"), "{text}");
        assert!(text.contains("attempts: 3\n"), "{text}");
        assert!(text.contains("size: 4 bytes\n"), "{text}");
        assert!(text.contains("run: 1\nvolume: 5\n"), "{text}");
        let gone = tmp.path().join("gone.nii");
        let err = move_aside(&q, &gone, ".nii", &details).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
