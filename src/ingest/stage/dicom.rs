//! DICOM files in the ingest thread.
//!
//! In: DICOM files the stage noticed (`.dcm`, `.ima`, no extension) and
//! their decode results. Out: the same events as for NIfTI — volumes keyed
//! by their header, duplicates, quarantines, missing volumes — through the
//! stage's ordering logic.
//!
//! - The key is the header's: run = Series Number, volume = Acquisition
//!   Number / temporal position (see [`DicomInfo::volume_number`]). The
//!   name, when the naming rule reads a run and volume from it (Siemens
//!   real-time `001_000013_000005.dcm`), registers the file as a candidate
//!   before it decodes, so a half-written file holds later volumes back as
//!   a NIfTI one does; once decoded, a header that disagrees with the name
//!   wins and the disagreement is logged. Names that say nothing (XA UIDs,
//!   `IM-0001-0004.dcm`) are keyed on decode.
//! - A file whose header key already has a volume is a duplicate: logged
//!   (pixel-identical or not, same SOP instance or not) and dropped.
//! - Single-slice files go to a [`SliceAssembler`]; the volume is a
//!   candidate from its first slice, taken when all its slices are in, and
//!   given up on (missing, with the count in the reason) when no slice has
//!   arrived for `partial_timeout`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Counters, Done, Stage, Taken, stat};
use crate::formats::dicom::slices::{Added, VolumeId};
use crate::formats::dicom::{self, Decoded, DicomInfo, SliceAssembler};
use crate::ingest::naming::Parsed;
use crate::ingest::pending::{Failure, FileStat, PendingFile};
use crate::ingest::reorder::Seen;
use crate::ingest::validate;
use crate::types::messages::{IngestEvent, IngestTiming, VolumeKey};
use crate::types::volume::Volume;

/// A single-slice volume being assembled.
#[derive(Debug)]
struct Group {
    first_seen: Instant,
    first_seen_wall: SystemTime,
    last_slice: Instant,
    attempts: u32,
}

/// The stage's DICOM state.
#[derive(Debug, Default)]
pub(super) struct DicomState {
    /// What each pending file's name says (cross-checked on decode).
    names: HashMap<PathBuf, Parsed>,
    /// Slice timing of decoded volumes until they are taken.
    pub(super) slice_timing: HashMap<PathBuf, Arc<[f64]>>,
    assembler: SliceAssembler,
    groups: HashMap<VolumeKey, Group>,
    /// Volumes decoded to learn their key, with the file's size and mtime
    /// then: reused by the attempt that takes them if the file is unchanged.
    decoded: HashMap<PathBuf, (Option<FileStat>, Volume)>,
    /// Runs whose acquisition has been described in the log.
    described: std::collections::HashSet<u32>,
}

/// [`dicom::read_file`], panics turned into errors.
fn read_guarded(path: &Path) -> Result<Decoded, Failure> {
    super::guard_reader(
        path,
        "DICOM",
        || dicom::read_file(path),
        dicom::DicomError::may_be_incomplete,
    )
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Stage {
    fn first_index(&self) -> u32 {
        // Scanners number volumes from 1.
        self.cfg.first_index.unwrap_or(1)
    }

    /// A DICOM file appeared: make it pending, registered under its name's
    /// key when the name carries a run and volume not yet taken.
    pub(super) fn dicom_candidate(
        &mut self,
        path: PathBuf,
        suffix: String,
        parsed: Option<Parsed>,
        current: Option<FileStat>,
        now: Instant,
    ) {
        if current.is_none() && !path.exists() {
            tracing::warn!("{}: removed before it could be read", path.display());
            Counters::bump(&self.counters.removed);
            self.done.insert(path, Done::Gone { stat: None });
            return;
        }
        Counters::bump(&self.counters.received);
        let named = parsed.filter(|p| p.run_from_name);
        let mut p = PendingFile::new(path.clone(), suffix, named.map_or(UNKNOWN, |n| n.key), now);
        p.dicom = true;
        p.registered = false;
        if let Some(n) = named.filter(|n| !self.reorder.is_taken(n.key)) {
            let first = self.cfg.first_index.unwrap_or(n.first_index);
            if self.reorder.seen(n.key, first, now) == Seen::Candidate {
                p.registered = true;
            }
        }
        tracing::debug!(
            "{}: new DICOM file{}",
            path.display(),
            if p.registered {
                format!(" (its name says {})", p.key)
            } else {
                String::new()
            }
        );
        if let Some(n) = parsed {
            self.dicom.names.insert(path.clone(), n);
        }
        self.pending.insert(path, p);
    }

    /// Before a round of attempts: decode the due DICOM files whose key is
    /// not known yet and register them, so that files written together are
    /// all candidates before any is taken and the ordering logic does not
    /// mistake one still queued for a gap (as NIfTI names allow up front).
    pub(super) fn key_dicom_burst(&mut self) {
        let now = Instant::now();
        let mut unkeyed: Vec<PathBuf> = self
            .pending
            .values()
            .filter(|p| p.dicom && !p.registered && p.next_try <= now)
            .map(|p| p.path.clone())
            .collect();
        if unkeyed.len() < 2 {
            return;
        }
        unkeyed.sort();
        for path in unkeyed {
            let before = stat(&path).ok().flatten();
            match read_guarded(&path) {
                Ok(Decoded::Volume { volume, info }) => {
                    let Ok(key) = self.header_key(&path, &info) else {
                        continue;
                    };
                    if self.rekey(&path, key, &volume, &info) {
                        if let Some(t) = info.slice_timing {
                            self.dicom.slice_timing.insert(path.clone(), t.into());
                        }
                        self.dicom.names.remove(&path);
                        self.dicom.decoded.insert(path, (before, volume));
                    }
                }
                // Slices register their volume as they arrive; failures
                // are for the attempt to report.
                Ok(Decoded::Slice { .. }) | Err(_) => {}
            }
        }
    }

    /// Decode a pending DICOM file. `None`: the file was dealt with here
    /// (a slice handed to the assembler, a duplicate dropped); otherwise the
    /// volume (the file now keyed by its header) or why not.
    pub(super) fn decode_dicom(&mut self, path: &Path) -> Option<Result<Volume, Failure>> {
        if let Some((then, volume)) = self.dicom.decoded.remove(path)
            && then.is_some()
            && then == stat(path).ok().flatten()
        {
            return Some(Ok(volume));
        }
        match read_guarded(path) {
            Err(f) => Some(Err(f)),
            Ok(Decoded::Volume { volume, info }) => {
                let key = match self.header_key(path, &info) {
                    Ok(k) => k,
                    Err(msg) => return Some(Err(Failure::Invalid(msg))),
                };
                if !self.rekey(path, key, &volume, &info) {
                    return None;
                }
                self.describe_run(key.run, &volume, &info);
                if let Some(t) = info.slice_timing {
                    self.dicom.slice_timing.insert(path.to_path_buf(), t.into());
                }
                self.dicom.names.remove(path);
                Some(Ok(volume))
            }
            Ok(Decoded::Slice { slice, info }) => {
                let key = match self.header_key(path, &info) {
                    Ok(k) => k,
                    Err(msg) => return Some(Err(Failure::Invalid(msg))),
                };
                self.add_slice(path, key, slice, info)
            }
        }
    }

    /// Say once per run what the scanner sends.
    fn describe_run(&mut self, run: u32, volume: &Volume, info: &DicomInfo) {
        if !self.dicom.described.insert(run) {
            return;
        }
        let timing = match &info.slice_timing {
            Some(t) => format!(
                "slice times 0 to {:.3} s kept with each volume",
                t.iter().copied().fold(0.0, f64::max)
            ),
            None => "no slice timing in the header".into(),
        };
        tracing::info!(
            "run {run}: DICOM {} of {} ({}), TR {}, {timing}; transfer syntax {}",
            info.flavour.name(),
            validate::words(volume.grid()),
            info.series_description
                .as_deref()
                .unwrap_or("no description"),
            info.repetition_time
                .map_or("unknown".to_string(), |t| format!("{t} s")),
            info.transfer_syntax
        );
    }

    /// Run and volume from the header, cross-checked with the name.
    fn header_key(&self, path: &Path, info: &DicomInfo) -> Result<VolumeKey, String> {
        let name = self.dicom.names.get(path);
        let run = info
            .series_number
            .or_else(|| name.filter(|n| n.run_from_name).map(|n| n.key.run));
        // A slice file's name numbers slices: never its volume.
        let index = info.volume_number().or_else(|| {
            name.filter(|_| info.flavour != dicom::Flavour::Slice)
                .map(|n| n.key.index)
        });
        let (Some(run), Some(index)) = (run, index) else {
            return Err(format!(
                "the {} header has no Series Number and volume number \
                 (Acquisition Number, temporal position), and the name gives none",
                info.flavour.name()
            ));
        };
        let key = VolumeKey { run, index };
        // Only names that state a run are evidence (a bare trailing number
        // may be a slice count or the end of a UID). A slice file's name
        // numbers slices, not volumes.
        if let Some(n) = name.filter(|n| n.run_from_name)
            && info.flavour != dicom::Flavour::Slice
            && n.key != key
        {
            tracing::warn!(
                "{}: the name says {} but the header says {key}; using the header",
                path.display(),
                n.key
            );
        }
        Ok(key)
    }

    /// Key a decoded volume file by its header. False when it turned out
    /// to be a duplicate (reported and dropped here).
    fn rekey(&mut self, path: &Path, key: VolumeKey, volume: &Volume, info: &DicomInfo) -> bool {
        let now = Instant::now();
        let Some(p) = self.pending.get(path) else {
            return false;
        };
        if p.rewrite_of.is_some() || (p.registered && p.key == key) {
            return true;
        }
        if p.registered {
            let old = p.key;
            let outs = self.reorder.removed(old, now);
            self.emit_outputs(outs);
        }
        if self.reorder.is_taken(key) {
            self.dicom_duplicate(path, key, volume, info);
            return false;
        }
        let first = self.first_index();
        self.reorder.seen(key, first, now);
        if let Some(p) = self.pending.get_mut(path) {
            p.key = key;
            p.registered = true;
        }
        true
    }

    /// A second file for a taken volume: say how it compares, drop it.
    fn dicom_duplicate(&mut self, path: &Path, key: VolumeKey, volume: &Volume, info: &DicomInfo) {
        let checksum = validate::checksum(volume);
        let first = self.done.iter().find_map(|(p, d)| match d {
            Done::Taken {
                key: k, checksum, ..
            } if *k == key => Some((p.clone(), *checksum)),
            _ => None,
        });
        let how = match first {
            Some((p, c)) => format!(
                "{} {}",
                if c == checksum {
                    "pixel-identical to"
                } else {
                    "with different pixels from"
                },
                name_of(&p)
            ),
            None => "after that volume was taken".to_string(),
        };
        let sop = info
            .sop_instance_uid
            .as_deref()
            .map(|u| format!(", SOP instance {u}"))
            .unwrap_or_default();
        self.drop_duplicate(
            path,
            key,
            format!("a second file for {key} ({how}{sop}); duplicate dropped, not processed"),
        );
    }

    fn drop_duplicate(&mut self, path: &Path, key: VolumeKey, what: String) {
        tracing::warn!("{}: {what}", path.display());
        self.pending.remove(path);
        self.dicom.names.remove(path);
        self.done.insert(path.to_path_buf(), Done::Duplicate);
        Counters::bump(&self.counters.duplicates);
        self.emit(IngestEvent::Duplicate {
            key,
            path: path.to_path_buf(),
        });
    }

    /// Hand a slice to the assembler; take the volumes it completes.
    fn add_slice(
        &mut self,
        path: &Path,
        key: VolumeKey,
        slice: dicom::Slice,
        info: DicomInfo,
    ) -> Option<Result<Volume, Failure>> {
        let now = Instant::now();
        let (registered, old, attempts, first_seen, first_seen_wall) = {
            let p = self.pending.get(path)?;
            (
                p.registered,
                p.key,
                p.attempts,
                p.first_seen,
                p.first_seen_wall,
            )
        };
        if !self.dicom.groups.contains_key(&key) && self.reorder.is_taken(key) {
            if registered {
                let outs = self.reorder.removed(old, now);
                self.emit_outputs(outs);
            }
            self.drop_duplicate(
                path,
                key,
                format!("a slice file for {key}, which is already complete; duplicate dropped"),
            );
            return None;
        }
        let added = match self.dicom.assembler.add(path.to_path_buf(), slice, info) {
            Ok(a) => a,
            Err(e) => return Some(Err(Failure::Invalid(e.to_string()))),
        };
        self.pending.remove(path);
        self.dicom.names.remove(path);
        if registered {
            // A slice file's name key is a slice number, not a volume.
            let outs = self.reorder.removed(old, now);
            self.emit_outputs(outs);
        }
        match added {
            Added::Duplicate { first, identical } => {
                let what = format!(
                    "a second file for a slice of {key} already held from {} ({}); duplicate dropped",
                    name_of(&first),
                    if identical {
                        "pixel-identical"
                    } else {
                        "different pixels"
                    }
                );
                self.drop_duplicate(path, key, what);
            }
            Added::Waiting { have, expected } => {
                tracing::debug!(
                    "{}: slice {have} of {} for {key}",
                    path.display(),
                    expected.map_or("?".to_string(), |e| e.to_string())
                );
                self.done.insert(path.to_path_buf(), Done::Slice);
                if !self.dicom.groups.contains_key(&key) {
                    let first = self.first_index();
                    self.reorder.seen(key, first, now);
                }
                let g = self.dicom.groups.entry(key).or_insert(Group {
                    first_seen,
                    first_seen_wall,
                    last_slice: now,
                    attempts: 0,
                });
                g.last_slice = now;
                g.attempts += attempts;
                self.reorder.activity(key.run, now);
            }
        }
        let finished = self.dicom.assembler.take_finished();
        self.take_assembled(finished);
        None
    }

    /// Take (or give up on) volumes the assembler finished.
    fn take_assembled(&mut self, finished: Vec<dicom::slices::Assembled>) {
        for a in finished {
            let key = VolumeKey {
                run: a.id.series,
                index: a.id.volume,
            };
            if let Ok((v, info)) = &a.result {
                self.describe_run(key.run, v, info);
            }
            let group = self.dicom.groups.remove(&key);
            let path = a.paths.first().cloned().unwrap_or_default();
            let checked = a.result.map_err(|e| e.to_string()).and_then(|(v, info)| {
                validate::check(
                    &v,
                    key.run,
                    self.grids.get(&key.run),
                    self.cfg.grid_tolerance_mm,
                )
                .map(|()| (v, info))
            });
            let (volume, info) = match checked {
                Ok(x) => x,
                Err(reason) => {
                    tracing::error!(
                        "{key}: its {} slice files do not make a usable volume ({reason}); \
                         declared missing, files left in place",
                        a.paths.len()
                    );
                    let outs = self.reorder.quarantined(key, reason, Instant::now());
                    self.emit_outputs(outs);
                    continue;
                }
            };
            let decoded = Instant::now();
            self.grids
                .entry(key.run)
                .or_insert_with(|| volume.grid().clone());
            for p in &a.paths {
                // The first file stands for the volume in rewrite checks.
                if *p == path {
                    self.done.insert(
                        p.clone(),
                        Done::Taken {
                            stat: stat(p).ok().flatten(),
                            checksum: validate::checksum(&volume),
                            key,
                            suffix: String::new(),
                        },
                    );
                }
            }
            let (first_seen, first_seen_wall, attempts) = group
                .map_or((decoded, SystemTime::now(), 1), |g| {
                    (g.first_seen, g.first_seen_wall, g.attempts.max(1))
                });
            tracing::debug!("{key}: assembled from {} slice files", a.paths.len());
            let item = Taken {
                path,
                volume,
                timing: IngestTiming {
                    first_seen_wall,
                    first_seen,
                    decoded,
                    released: decoded,
                    attempts,
                    decode_seconds: 0.0,
                },
                slice_timing: info.slice_timing.map(Into::into),
            };
            let outs = self.reorder.taken(key, item, decoded);
            self.emit_outputs(outs);
        }
    }

    /// Give up on slice volumes that stopped growing.
    pub(super) fn expire_slices(&mut self, now: Instant) {
        let timeout = self.policy.partial_timeout;
        let stale: Vec<VolumeKey> = self
            .dicom
            .groups
            .iter()
            .filter(|(_, g)| now.saturating_duration_since(g.last_slice) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.dicom.groups.remove(&key);
            let id = VolumeId {
                series: key.run,
                volume: key.index,
            };
            let Some((paths, have, expected)) = self.dicom.assembler.abandon(&id) else {
                continue;
            };
            let reason = format!(
                "only {have}{} slices arrived, none for {:.1} s",
                expected.map_or(String::new(), |e| format!(" of {e}")),
                timeout.as_secs_f64()
            );
            tracing::error!(
                "{key}: {reason}; declared missing ({} slice files left in place)",
                paths.len()
            );
            let outs = self.reorder.quarantined(key, reason, now);
            self.emit_outputs(outs);
        }
    }

    /// When the next slice volume would be given up on.
    pub(super) fn slices_deadline(&self) -> Option<Instant> {
        self.dicom
            .groups
            .values()
            .map(|g| g.last_slice + self.policy.partial_timeout)
            .min()
    }

    /// Stopping: volumes whose size was never known are finished with what
    /// they hold; short ones are declared missing.
    pub(super) fn flush_slices(&mut self) {
        let all = self.dicom.assembler.finish_all();
        self.take_assembled(all);
    }
}

/// The key of a pending DICOM file whose name says nothing: never
/// registered, so never seen by the ordering logic.
const UNKNOWN: VolumeKey = VolumeKey {
    run: u32::MAX,
    index: u32::MAX,
};
