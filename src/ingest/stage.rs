//! The ingest thread.
//!
//! In: [`Msg`]s from the watcher ("look at this path") and the clock.
//! Out: [`IngestEvent`]s on the output channel, counters, quarantined files.
//!
//! Each path the watcher mentions is looked at: ignored (suffix or name),
//! registered as a candidate for its run and index, or — when already dealt
//! with — checked for a rewrite or reappearance. Candidates are decoded
//! when an event says they changed and on a retry timer (watchers coalesce
//! and miss events, polling sees coarse mtimes), and handed to the ordering
//! logic once they decode and validate.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

mod dicom;

use super::config::{IngestConfig, WatchMode};
use super::naming::{self, Naming};
use super::pending::{Failure, FileStat, PendingFile, RetryPolicy, Verdict};
use super::quarantine;
use super::reorder::{Output, Reorder, ReorderConfig, ResumedRun, Seen};
use super::validate;
use super::watch::{self, Msg, Origin, Watching};
use super::{Counters, IngestError};
use crate::formats::nifti;
use crate::stage::{Delivery, Outlet};
use crate::types::messages::{IngestEvent, IngestTiming, IngestedVolume, MissingReason, VolumeKey};
use crate::types::volume::{Grid, Volume};

/// A decoded, validated volume waiting for its turn.
#[derive(Debug)]
struct Taken {
    path: PathBuf,
    volume: Volume,
    timing: IngestTiming,
    /// Per-slice acquisition times (DICOM headers).
    slice_timing: Option<Arc<[f64]>>,
}

/// What became of a path that is no longer pending.
#[derive(Debug, Clone)]
enum Done {
    /// Its volume was taken; `stat` is the version taken.
    Taken {
        stat: Option<FileStat>,
        checksum: u64,
        key: VolumeKey,
        suffix: String,
    },
    /// Reported as a duplicate; never looked at again.
    Duplicate,
    /// Not a volume file; never looked at again.
    Ignored,
    /// A single-slice DICOM file handed to the slice assembler; a later
    /// change is logged, not re-read.
    Slice,
    /// Quarantined or removed; `stat` is what is at the path now (`None`
    /// when nothing is). A different file appearing there is new.
    Gone { stat: Option<FileStat> },
}

/// `auto` mode's check that the native watcher sees what a listing sees.
#[derive(Debug)]
struct AutoCheck {
    next_scan: Instant,
    /// Paths the native watcher has mentioned.
    reported: HashSet<PathBuf>,
    /// Files present at start-up: no event is owed for them.
    preexisting: HashSet<PathBuf>,
    /// Files a listing found that the native watcher has not mentioned yet,
    /// with when the listing first found them.
    unreported: HashMap<PathBuf, Instant>,
    /// Polling could not be started; keep listing instead.
    switch_failed: bool,
}

/// Start watching and spawn the stage thread.
pub(crate) fn start(
    cfg: IngestConfig,
    out: Sender<IngestEvent>,
    counters: Arc<Counters>,
    resumed: Vec<ResumedRun>,
) -> Result<(Sender<Msg>, JoinHandle<()>), IngestError> {
    cfg.validate()?;
    let naming = Naming::from_config(&cfg.naming)?;
    let dir = std::fs::canonicalize(&cfg.watch_dir).map_err(|source| IngestError::WatchDir {
        path: cfg.watch_dir.clone(),
        source,
    })?;
    if !dir.is_dir() {
        return Err(IngestError::WatchDir {
            path: cfg.watch_dir.clone(),
            source: std::io::Error::other("not a directory"),
        });
    }
    let qdir = cfg.quarantine_dir();
    match std::fs::create_dir_all(&qdir) {
        // Compared canonically: a quarantine folder that is the watch folder
        // would feed every quarantined file back in.
        Ok(()) if std::fs::canonicalize(&qdir).is_ok_and(|q| q == dir) => {
            return Err(IngestError::Config(format!(
                "quarantine_dir {} is the watch folder itself",
                qdir.display()
            )));
        }
        Ok(()) => {}
        Err(e) => tracing::warn!(
            "quarantine folder {} cannot be created now ({e}); will retry when a file needs it",
            qdir.display()
        ),
    }

    let (tx, rx) = crossbeam_channel::unbounded();
    let poll_interval = IngestConfig::secs(cfg.poll_interval);
    let mut notices = Vec::new();
    let watching = match cfg.mode {
        WatchMode::Poll => watch::start_poll(&dir, tx.clone(), poll_interval).map_err(|e| {
            IngestError::Watcher {
                path: dir.clone(),
                message: e.to_string(),
            }
        })?,
        WatchMode::Events | WatchMode::Auto => {
            match watch::start_native(&dir, tx.clone(), cfg.event_source) {
                Ok(w) => w,
                Err(e) => {
                    let notice = format!(
                        "native file watching of {} failed ({e}); polling every {} ms instead",
                        dir.display(),
                        poll_interval.as_millis()
                    );
                    tracing::warn!("{notice}");
                    notices.push(notice);
                    watch::start_poll(&dir, tx.clone(), poll_interval).map_err(|e| {
                        IngestError::Watcher {
                            path: dir.clone(),
                            message: e.to_string(),
                        }
                    })?
                }
            }
        }
    };
    counters
        .polling
        .store(watching.is_polling(), Ordering::Relaxed);
    // Listed here, after the watcher started and before spawn() returns, so
    // that nothing falls between the two and so that "present at start-up"
    // means present when the caller got its handle.
    let initial = match watch::scan(&dir) {
        Ok(files) => files,
        Err(source) => return Err(IngestError::WatchDir { path: dir, source }),
    };
    let now = Instant::now();
    let auto = (cfg.mode == WatchMode::Auto && !watching.is_polling()).then(|| AutoCheck {
        next_scan: now + IngestConfig::secs(cfg.scan_interval),
        reported: HashSet::new(),
        preexisting: initial.iter().cloned().collect(),
        unreported: HashMap::new(),
        switch_failed: false,
    });
    tracing::info!(
        "ingest watching {} ({}; naming {:?}; quarantine {})",
        dir.display(),
        match (&watching, &auto) {
            (Watching::Poll(_), _) => format!("polling every {} ms", poll_interval.as_millis()),
            (_, Some(_)) => "native events, checked by a listing".to_string(),
            _ => "native events".to_string(),
        },
        cfg.naming,
        qdir.display()
    );
    let retry = IngestConfig::secs(cfg.retry_interval);
    let mut reorder = Reorder::new(ReorderConfig {
        window: cfg.reorder_window,
        gap_timeout: IngestConfig::secs(cfg.gap_timeout),
        volumes_per_run: cfg.volumes_per_run,
        run_idle_timeout: IngestConfig::secs(cfg.run_idle_timeout),
    });
    reorder.resume(&resumed, now);
    let processed = resumed
        .iter()
        .flat_map(|r| {
            r.taken.iter().map(|(&index, file)| {
                let name = Path::new(file).file_name().map(|n| n.to_os_string());
                (VolumeKey { run: r.run, index }, name)
            })
        })
        .collect();
    let stage = Stage {
        policy: RetryPolicy {
            retry_interval: retry,
            partial_timeout: IngestConfig::secs(cfg.partial_timeout),
            invalid_settle: retry * 2,
        },
        reorder,
        processed,
        skipped_processed: 0,
        cfg,
        naming,
        dir,
        qdir,
        out: Outlet::new("ingest").to("realign", out, Delivery::Reliable),
        counters,
        rx,
        tx: tx.clone(),
        watching,
        auto,
        pending: HashMap::new(),
        done: HashMap::new(),
        grids: HashMap::new(),
        ignored_exts: HashSet::new(),
        downstream_gone: false,
        last_heartbeat: Instant::now(),
        notices,
        initial,
        dicom: Default::default(),
    };
    let thread = crate::stage::thread("ingest", move || stage.run())
        .map_err(|e| IngestError::Thread(e.source))?;
    Ok((tx, thread))
}

struct Stage {
    cfg: IngestConfig,
    naming: Naming,
    dir: PathBuf,
    qdir: PathBuf,
    policy: RetryPolicy,
    out: Outlet<IngestEvent>,
    counters: Arc<Counters>,
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    watching: Watching,
    auto: Option<AutoCheck>,
    pending: HashMap<PathBuf, PendingFile>,
    done: HashMap<PathBuf, Done>,
    reorder: Reorder<Taken>,
    /// Volumes a resumed session settled before the restart, with the name
    /// of the file each came from: that file is not processed again.
    processed: HashMap<VolumeKey, Option<std::ffi::OsString>>,
    skipped_processed: u64,
    /// Each run's grid, set by its first good volume.
    grids: HashMap<u32, Grid>,
    ignored_exts: HashSet<String>,
    downstream_gone: bool,
    /// When the last heartbeat went downstream.
    last_heartbeat: Instant,
    notices: Vec<String>,
    /// The folder's files when the stage started.
    initial: Vec<PathBuf>,
    /// DICOM: names, slice volumes being assembled, slice timing.
    dicom: dicom::DicomState,
}

/// Size and mtime of `path`; `Ok(None)` when nothing is there.
fn stat(path: &Path) -> std::io::Result<Option<FileStat>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(FileStat::of(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Run a file reader (`what` names it in messages), with a panic in the
/// reader turned into an error: a reader bug met by one odd file must cost
/// that file, not the session.
fn guard_reader<T, E: std::fmt::Display>(
    path: &Path,
    what: &str,
    read: impl FnOnce() -> Result<T, E> + std::panic::UnwindSafe,
    may_be_incomplete: impl Fn(&E) -> bool,
) -> Result<T, Failure> {
    match std::panic::catch_unwind(read) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Decode {
            message: e.to_string(),
            may_be_incomplete: may_be_incomplete(&e),
        }),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            tracing::error!("{}: the {what} reader panicked ({why})", path.display());
            Err(Failure::Decode {
                message: format!("the {what} reader panicked: {why}"),
                // It may have been a partial file that tripped it.
                may_be_incomplete: true,
            })
        }
    }
}

/// [`nifti::read_volume`], panics turned into errors.
fn read_guarded(path: &Path) -> Result<Volume, Failure> {
    guard_reader(
        path,
        "NIfTI",
        || nifti::read_volume(path),
        nifti::ReadError::may_be_incomplete,
    )
}

/// Most messages taken per loop turn, so that a flood of events cannot
/// starve decoding and timeouts.
const DRAIN_MAX: usize = 10_000;
/// Longest sleep of the loop: a safety net should a deadline be missed.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often a heartbeat is sent through the pipeline (the loop wakes at
/// least every `MAX_SLEEP`, so this is the actual period when idle).
const HEARTBEAT: Duration = Duration::from_secs(1);

impl Stage {
    fn run(mut self) {
        for n in std::mem::take(&mut self.notices) {
            self.emit(IngestEvent::Notice(n));
        }
        let now = Instant::now();
        for f in std::mem::take(&mut self.initial) {
            self.on_path(f, true, now);
        }
        if self.skipped_processed > 0 {
            tracing::info!(
                "{} file(s) in {} were processed before the restart: not processed again",
                self.skipped_processed,
                self.dir.display()
            );
        }
        loop {
            if self.downstream_gone {
                break;
            }
            let deadline = self.next_deadline(Instant::now());
            let mut stop = match self.rx.recv_deadline(deadline) {
                Ok(m) => self.handle(m),
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            // Take the whole burst first, so that files written together are
            // all registered as candidates before any of them is decoded and
            // the ordering logic never mistakes a queued file for a gap.
            let mut n = 0;
            while !stop && n < DRAIN_MAX {
                match self.rx.try_recv() {
                    Ok(m) => stop = self.handle(m),
                    Err(_) => break,
                }
                n += 1;
            }
            if stop {
                break;
            }
            self.attempt_due(true);
            self.expire_slices(Instant::now());
            let outs = self.reorder.tick(Instant::now());
            self.emit_outputs(outs);
            self.auto_check(Instant::now());
            self.heartbeat();
        }
        self.finish();
    }

    /// Stop: one last look at everything, then flush.
    fn finish(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            if !matches!(m, Msg::Stop) {
                self.handle(m);
            }
        }
        // Files that completed since their last attempt still count; nothing
        // is quarantined now, as the partial timeout has not run out.
        for p in self.pending.values_mut() {
            p.next_try = Instant::now();
        }
        self.attempt_due(false);
        let mut left: Vec<_> = self.pending.values().collect();
        left.sort_by_key(|p| (p.key, p.path.clone()));
        for p in left {
            let why = match &p.last_failure {
                Some(Failure::Decode { message, .. }) | Some(Failure::Invalid(message)) => {
                    message.as_str()
                }
                None => "not read yet",
            };
            tracing::warn!(
                "{}: still not usable when ingest stopped ({why}); left in place",
                p.path.display()
            );
        }
        self.flush_slices();
        let outs = self.reorder.flush();
        self.emit_outputs(outs);
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut d = now + MAX_SLEEP;
        for p in self.pending.values() {
            d = d.min(p.next_try);
        }
        if let Some(r) = self.reorder.next_deadline() {
            d = d.min(r);
        }
        if let Some(r) = self.slices_deadline() {
            d = d.min(r);
        }
        if let Some(a) = &self.auto {
            d = d.min(a.next_scan);
            let grace = IngestConfig::secs(self.cfg.events_grace);
            if let Some(t) = a.unreported.values().min() {
                d = d.min(*t + grace);
            }
        }
        d.max(now)
    }

    /// Returns true for `Stop`.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Stop => return true,
            Msg::Path {
                path,
                origin,
                urgent,
            } => {
                if let (Origin::Native, Some(a)) = (origin, &mut self.auto) {
                    a.unreported.remove(&path);
                    a.reported.insert(path.clone());
                }
                self.on_path(path, urgent, Instant::now());
            }
            Msg::Rescan => {
                tracing::warn!(
                    "watcher of {} lost events (queue overflow); listing the folder",
                    self.dir.display()
                );
                let now = Instant::now();
                for f in self.list() {
                    self.on_path(f, true, now);
                }
            }
            Msg::Error(e) => tracing::warn!("watching {}: {e}", self.dir.display()),
        }
        false
    }

    fn list(&self) -> Vec<PathBuf> {
        match watch::scan(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!("listing {}: {e}", self.dir.display());
                Vec::new()
            }
        }
    }

    /// Something may have happened at `path`.
    fn on_path(&mut self, path: PathBuf, urgent: bool, now: Instant) {
        if path.parent() != Some(self.dir.as_path()) {
            return;
        }
        if let Some(p) = self.pending.get_mut(&path) {
            p.nudge(urgent, now, self.policy.retry_interval);
            return;
        }
        let current = stat(&path);
        match self.done.get(&path) {
            None => {}
            Some(Done::Duplicate | Done::Ignored) => return,
            Some(Done::Slice) => {
                tracing::warn!(
                    "{}: changed after its slice was used; not read again",
                    path.display()
                );
                self.done.insert(path, Done::Ignored);
                return;
            }
            Some(Done::Taken {
                stat: was,
                checksum,
                key,
                suffix,
            }) => {
                let Ok(Some(now_stat)) = current else { return };
                if Some(now_stat) == *was {
                    return;
                }
                // Changed after it was taken: decode the new version and
                // compare, as copy tools touch mtimes after writing.
                let mut p = PendingFile::new(path.clone(), suffix.clone(), *key, now);
                p.rewrite_of = Some(*checksum);
                p.dicom = naming::is_dicom_suffix(suffix);
                tracing::info!(
                    "{}: changed after {key} was taken from it; checking the new version",
                    path.display()
                );
                Counters::bump(&self.counters.received);
                self.done.remove(&path);
                self.pending.insert(path, p);
                return;
            }
            Some(Done::Gone { stat: was }) => match current {
                Ok(Some(s)) if Some(s) != *was => {
                    self.done.remove(&path);
                }
                _ => return,
            },
        }
        if matches!(current, Ok(Some(_))) && !path.is_file() {
            return; // a folder (the quarantine folder, say)
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            self.ignore(&path, "its name is not valid UTF-8".into());
            return;
        };
        let suffix = naming::accepted_suffix(&name, &self.cfg.suffixes)
            .map(str::to_owned)
            .or_else(|| {
                (self.cfg.extensionless_dicom && naming::is_extensionless(&name)).then(String::new)
            });
        let Some(suffix) = suffix else {
            let ext = naming::extension_of(&name);
            Counters::bump(&self.counters.ignored);
            self.done.insert(path.clone(), Done::Ignored);
            if self.ignored_exts.insert(ext.clone()) {
                tracing::info!(
                    "ignoring {}: files ending in {ext} are not volumes (accepted: {}); \
                     further such files are ignored without a message",
                    path.display(),
                    self.cfg.suffixes.join(", ")
                );
            }
            return;
        };
        let stem = &name[..name.len() - suffix.len()];
        if naming::is_dicom_suffix(&suffix) {
            let parsed = self.naming.parse(&name, stem);
            return self.dicom_candidate(path, suffix, parsed, current.ok().flatten(), now);
        }
        let Some(parsed) = self.naming.parse(&name, stem) else {
            self.ignore(
                &path,
                format!(
                    "its name does not match the naming rule {:?}",
                    self.cfg.naming
                ),
            );
            return;
        };
        let key = parsed.key;
        if self
            .processed
            .get(&key)
            .is_some_and(|f| f.as_deref() == path.file_name())
        {
            tracing::debug!("{}: {key} was processed before the restart", path.display());
            self.skipped_processed += 1;
            self.done.insert(path, Done::Duplicate);
            return;
        }
        match current {
            Ok(None) => {
                tracing::warn!(
                    "{}: removed before it could be read ({key})",
                    path.display()
                );
                Counters::bump(&self.counters.removed);
                self.done.insert(path, Done::Gone { stat: None });
                return;
            }
            Ok(Some(_)) => {}
            // Unreadable metadata: the decode attempts will say why.
            Err(_) => {}
        }
        Counters::bump(&self.counters.received);
        let first_index = self.cfg.first_index.unwrap_or(parsed.first_index);
        match self.reorder.seen(key, first_index, now) {
            Seen::Duplicate => {
                tracing::warn!(
                    "{}: a second file for {key}, which already has a volume; not processed",
                    path.display()
                );
                self.done.insert(path.clone(), Done::Duplicate);
                Counters::bump(&self.counters.duplicates);
                self.emit(IngestEvent::Duplicate { key, path });
            }
            Seen::Candidate => {
                tracing::debug!("{}: new file for {key}", path.display());
                self.pending
                    .insert(path.clone(), PendingFile::new(path, suffix, key, now));
            }
        }
    }

    fn ignore(&mut self, path: &Path, why: String) {
        Counters::bump(&self.counters.ignored);
        self.done.insert(path.to_path_buf(), Done::Ignored);
        tracing::warn!("ignoring {}: {why}", path.display());
    }

    /// Attempt every pending file whose time has come, lowest index first.
    fn attempt_due(&mut self, may_give_up: bool) {
        self.key_dicom_burst();
        let now = Instant::now();
        let mut due: Vec<(VolumeKey, PathBuf)> = self
            .pending
            .values()
            .filter(|p| p.next_try <= now)
            .map(|p| (p.key, p.path.clone()))
            .collect();
        due.sort();
        for (_, path) in due {
            self.attempt(&path, may_give_up);
            if self.downstream_gone {
                return;
            }
        }
    }

    fn attempt(&mut self, path: &Path, may_give_up: bool) {
        let now = Instant::now();
        let Some(p) = self.pending.get_mut(path) else {
            return;
        };
        p.last_attempt = Some(now);
        let key = p.key;
        match stat(path) {
            Ok(None) => return self.removed(path),
            Ok(Some(s)) => {
                if p.observe(s, now) && p.rewrite_of.is_none() {
                    // A file still growing keeps its run alive.
                    self.reorder.activity(key.run, now);
                }
            }
            Err(_) => {}
        }
        let Some(p) = self.pending.get_mut(path) else {
            return;
        };
        p.attempts += 1;
        let dicom = p.dicom;
        let t0 = Instant::now();
        let result = if dicom {
            // DICOM says its own run and volume; it may re-key the file,
            // or consume it whole (a slice, a duplicate).
            match self.decode_dicom(path) {
                Some(r) => r,
                None => return,
            }
        } else {
            read_guarded(path)
        };
        let decoded = Instant::now();
        let Some(key) = self.pending.get(path).map(|p| p.key) else {
            return;
        };
        let failure = match result {
            Ok(vol) => {
                match validate::check(
                    &vol,
                    key.run,
                    self.grids.get(&key.run),
                    self.cfg.grid_tolerance_mm,
                ) {
                    Ok(()) => {
                        let secs = decoded.duration_since(t0).as_secs_f64();
                        return self.take(path, vol, decoded, secs);
                    }
                    Err(msg) => Failure::Invalid(msg),
                }
            }
            Err(failure) => {
                if matches!(stat(path), Ok(None)) {
                    return self.removed(path);
                }
                failure
            }
        };
        let Some(p) = self.pending.get_mut(path) else {
            return;
        };
        if p.last_failure.as_ref() != Some(&failure) {
            match &failure {
                Failure::Decode {
                    message,
                    may_be_incomplete: true,
                } => tracing::debug!("{}: not complete yet ({message}); retrying", path.display()),
                Failure::Decode { message, .. } => tracing::info!(
                    "{}: does not decode ({message}); retrying while it changes, \
                     quarantine after {:.1} s unchanged",
                    path.display(),
                    self.policy.partial_timeout.as_secs_f64()
                ),
                Failure::Invalid(message) => tracing::info!(
                    "{}: decoded but unusable ({message}); quarantine unless it changes",
                    path.display()
                ),
            }
        }
        let verdict = p.verdict(&failure, decoded, &self.policy);
        p.last_failure = Some(failure);
        match verdict {
            Verdict::RetryAt(t) => p.next_try = t,
            Verdict::GiveUp(reason) if may_give_up => self.give_up(path, reason),
            Verdict::GiveUp(_) => {}
        }
    }

    fn take(&mut self, path: &Path, volume: Volume, decoded: Instant, decode_seconds: f64) {
        let Some(p) = self.pending.remove(path) else {
            return;
        };
        let key = p.key;
        let checksum = validate::checksum(&volume);
        // After the decode: a version that changed during it is then seen
        // as a change, re-read, and found identical or not.
        let now_stat = stat(path).ok().flatten();
        self.done.insert(
            path.to_path_buf(),
            Done::Taken {
                stat: now_stat,
                checksum,
                key,
                suffix: p.suffix.clone(),
            },
        );
        if let Some(before) = p.rewrite_of {
            if before == checksum {
                tracing::debug!(
                    "{}: changed on disk but holds the same voxels; nothing to do",
                    path.display()
                );
            } else {
                tracing::warn!(
                    "{}: rewritten with different voxels after {key} was taken; \
                     reported as a duplicate, not processed",
                    path.display()
                );
                Counters::bump(&self.counters.duplicates);
                self.emit(IngestEvent::Duplicate {
                    key,
                    path: path.to_path_buf(),
                });
            }
            return;
        }
        self.grids
            .entry(key.run)
            .or_insert_with(|| volume.grid().clone());
        let timing = IngestTiming {
            first_seen_wall: p.first_seen_wall,
            first_seen: p.first_seen,
            decoded,
            released: decoded,
            attempts: p.attempts,
            decode_seconds,
        };
        tracing::debug!(
            "{}: {key} decoded after {} attempt(s) in {:.1} ms",
            path.display(),
            p.attempts,
            decode_seconds * 1e3
        );
        let item = Taken {
            path: path.to_path_buf(),
            volume,
            timing,
            slice_timing: self.dicom.slice_timing.remove(path),
        };
        let outs = self.reorder.taken(key, item, decoded);
        self.emit_outputs(outs);
    }

    fn removed(&mut self, path: &Path) {
        let Some(p) = self.pending.remove(path) else {
            return;
        };
        tracing::warn!(
            "{}: removed before it could be read ({}, {} attempt(s))",
            path.display(),
            p.key,
            p.attempts
        );
        Counters::bump(&self.counters.removed);
        self.done
            .insert(path.to_path_buf(), Done::Gone { stat: None });
        if p.rewrite_of.is_none() && p.registered {
            let outs = self.reorder.removed(p.key, Instant::now());
            self.emit_outputs(outs);
        }
    }

    fn give_up(&mut self, path: &Path, reason: String) {
        let Some(p) = self.pending.remove(path) else {
            return;
        };
        let details = quarantine::Details {
            reason: &reason,
            attempts: p.attempts,
            size: p.stat.map(|s| s.size),
            key: p.registered.then_some(p.key),
            first_seen: Some(p.first_seen_wall),
        };
        let moved = quarantine::move_aside(&self.qdir, path, &p.suffix, &details);
        let mut reason = reason;
        let moved_to = match moved {
            Ok(m) => {
                let left = if m.original_left {
                    stat(path).ok().flatten()
                } else {
                    None
                };
                self.done
                    .insert(path.to_path_buf(), Done::Gone { stat: left });
                m.to
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && matches!(stat(path), Ok(None)) =>
            {
                self.pending.insert(path.to_path_buf(), p);
                return self.removed(path);
            }
            Err(e) => {
                tracing::error!(
                    "{}: could not be moved to quarantine folder {} ({e}); \
                     left in place and no longer retried unless it changes",
                    path.display(),
                    self.qdir.display()
                );
                self.done.insert(
                    path.to_path_buf(),
                    Done::Gone {
                        stat: stat(path).ok().flatten(),
                    },
                );
                reason.push_str(&format!(" [left in place: could not be moved: {e}]"));
                path.to_path_buf()
            }
        };
        tracing::error!(
            "{}: quarantined as {} ({}): {reason}",
            path.display(),
            moved_to.display(),
            if p.registered {
                p.key.to_string()
            } else {
                "run and volume unknown".to_string()
            }
        );
        Counters::bump(&self.counters.quarantined);
        self.emit(IngestEvent::Quarantined {
            key: p.registered.then_some(p.key),
            path: path.to_path_buf(),
            moved_to,
            reason: reason.clone(),
        });
        if p.rewrite_of.is_none() && p.registered {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let outs = self
                .reorder
                .quarantined(p.key, format!("{name}: {reason}"), Instant::now());
            self.emit_outputs(outs);
        }
    }

    fn auto_check(&mut self, now: Instant) {
        let Some(a) = &self.auto else { return };
        if now >= a.next_scan {
            let files = self.list();
            let Some(a) = &mut self.auto else { return };
            a.next_scan = now + IngestConfig::secs(self.cfg.scan_interval);
            let present: HashSet<&PathBuf> = files.iter().collect();
            a.unreported.retain(|p, _| present.contains(p));
            let mut fresh = Vec::new();
            for f in &files {
                if a.preexisting.contains(f) || a.reported.contains(f) {
                    continue;
                }
                if !a.unreported.contains_key(f) {
                    a.unreported.insert(f.clone(), now);
                    fresh.push(f.clone());
                }
            }
            // Do not wait for the verdict on the watcher to take them.
            for f in fresh {
                self.on_path(f, true, now);
            }
        }
        let grace = IngestConfig::secs(self.cfg.events_grace);
        let Some(a) = &self.auto else { return };
        if a.switch_failed {
            return;
        }
        let overdue = a
            .unreported
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= grace)
            .map(|(p, _)| p.clone())
            .min();
        if let Some(path) = overdue {
            self.switch_to_polling(&path, grace);
        }
    }

    fn switch_to_polling(&mut self, unreported: &Path, grace: Duration) {
        let interval = IngestConfig::secs(self.cfg.poll_interval);
        match watch::start_poll(&self.dir, self.tx.clone(), interval) {
            Ok(w) => {
                self.watching = w;
                self.auto = None;
                self.counters.polling.store(true, Ordering::Relaxed);
                let notice = format!(
                    "auto watch mode: the native file watcher never reported {} within {:.1} s \
                     (is {} a network share?); switched to polling every {} ms",
                    unreported.display(),
                    grace.as_secs_f64(),
                    self.dir.display(),
                    interval.as_millis()
                );
                tracing::warn!("{notice}");
                self.emit(IngestEvent::Notice(notice));
                let now = Instant::now();
                for f in self.list() {
                    self.on_path(f, true, now);
                }
            }
            Err(e) => {
                tracing::error!(
                    "the native watcher of {} misses files, and polling could not be \
                     started ({e}); relying on the periodic listing",
                    self.dir.display()
                );
                if let Some(a) = &mut self.auto {
                    a.switch_failed = true;
                }
            }
        }
    }

    fn emit_outputs(&mut self, outs: Vec<Output<Taken>>) {
        for o in outs {
            let ev = match o {
                Output::RunStarted(run, first_index) => {
                    tracing::info!("run {run} started");
                    IngestEvent::RunStarted { run, first_index }
                }
                Output::RunEnded(run) => {
                    tracing::info!("run {run} ended");
                    IngestEvent::RunEnded { run }
                }
                Output::Release { key, item, late } => {
                    let mut timing = item.timing;
                    timing.released = Instant::now();
                    Counters::bump(&self.counters.released);
                    if late {
                        Counters::bump(&self.counters.late);
                        tracing::warn!(
                            "{}: {key} arrived after it was given up on; delivered late",
                            item.path.display()
                        );
                    }
                    IngestEvent::Volume(Box::new(IngestedVolume {
                        key,
                        path: item.path,
                        volume: item.volume,
                        timing,
                        late,
                        slice_timing: item.slice_timing,
                    }))
                }
                Output::Missing { key, reason } => {
                    Counters::bump(&self.counters.missing);
                    match &reason {
                        MissingReason::NotReceived => {
                            tracing::warn!("{key} declared missing: no usable file arrived in time")
                        }
                        MissingReason::Quarantined(r) => {
                            tracing::warn!("{key} declared missing: its file was quarantined ({r})")
                        }
                        MissingReason::StillIncomplete => tracing::warn!(
                            "{key} declared missing for now: its file was still incomplete after the re-ordering wait; it will be delivered late if it completes"
                        ),
                    }
                    IngestEvent::Missing { key, reason }
                }
                Output::Duplicate { key, item } => {
                    tracing::warn!(
                        "{}: a second file for {key}, which already has a volume; not processed",
                        item.path.display()
                    );
                    Counters::bump(&self.counters.duplicates);
                    self.done.insert(item.path.clone(), Done::Duplicate);
                    IngestEvent::Duplicate {
                        key,
                        path: item.path,
                    }
                }
            };
            self.emit(ev);
        }
    }

    /// Send a heartbeat when one is due. It travels through every stage, so
    /// its arrival at the end proves the whole pipeline moves; the outlet
    /// never waits for one.
    fn heartbeat(&mut self) {
        let now = Instant::now();
        if self.downstream_gone || now.duration_since(self.last_heartbeat) < HEARTBEAT {
            return;
        }
        self.last_heartbeat = now;
        self.emit(IngestEvent::Heartbeat(now));
    }

    /// Send downstream. The outlet waits when realign is behind, and says
    /// so: volumes are never dropped.
    fn emit(&mut self, ev: IngestEvent) {
        if self.downstream_gone {
            return;
        }
        self.out.send(ev);
        if self.out.is_closed() {
            self.lost_downstream();
        }
    }

    fn lost_downstream(&mut self) {
        tracing::error!("the receiver of ingest events is gone; ingest stops");
        self.downstream_gone = true;
    }
}
