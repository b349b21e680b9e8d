//! Ingest: the scanner's export folder → an ordered stream of volumes.
//!
//! In: files appearing in [`IngestConfig::watch_dir`]: NIfTI `.nii` /
//! `.nii.gz`, one 3-D volume each, named with a run and volume number; or
//! DICOM (`.dcm`, `.ima`, no extension) — a Siemens mosaic or enhanced file
//! per volume, or one file per slice — whose header says the run and
//! volume (the name is a cross-check; `stage::dicom`).
//! Out: [`IngestEvent`]s on the channel given to [`spawn`] — good volumes in
//! index order per run, and a report for everything else (missing, late,
//! duplicate, quarantined, runs starting and ending, watching notices).
//! Nothing is skipped silently, input never causes a panic, and a bad file
//! never costs a good volume.
//!
//! Pieces:
//! - [`config`]: settings and their defaults;
//! - `watch`: notify's native or poll watcher feeding "look at this path";
//! - [`naming`]: file name → run and index;
//! - `pending`: retry / give-up rules for files that do not decode yet;
//! - `validate`: grid and NaN checks on a decoded volume;
//! - `quarantine`: moving unusable files aside with a reason file;
//! - [`reorder`]: ordering, gaps, late volumes, duplicates and runs;
//! - `stage`: the thread that ties them together.
//!
//! The stage runs on one thread of its own (notify adds its watcher
//! thread). Decoding a volume takes milliseconds, so one thread keeps up
//! with any scanner and keeps the ordering logic free of locks.

pub mod config;
pub mod naming;
mod pending;
mod quarantine;
pub mod reorder;
mod stage;
mod validate;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

pub use config::{EventSource, IngestConfig, WatchMode};

use crate::types::messages::IngestEvent;

/// Why the ingest stage could not start (or stopped abnormally).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A setting is invalid.
    #[error("ingest configuration: {0}")]
    Config(String),
    /// The watch folder cannot be used.
    #[error("watch folder {}: {source}", path.display())]
    WatchDir {
        /// The folder.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// No watcher could be started.
    #[error("watching {}: {message}", path.display())]
    Watcher {
        /// The folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The stage thread could not be started.
    #[error("could not start the ingest thread: {0}")]
    Thread(std::io::Error),
    /// The stage thread panicked (a bug: input never should cause one).
    #[error("the ingest thread panicked: {0}")]
    Panicked(String),
}

/// A snapshot of the stage's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Volume files noticed (accepted suffix, name parsed); a file rewritten
    /// after it was taken counts again.
    pub received: u64,
    /// `Volume` events sent, late ones included.
    pub released: u64,
    /// Of those, sent with `late: true`.
    pub late: u64,
    /// `Duplicate` events sent.
    pub duplicates: u64,
    /// `Missing` events sent.
    pub missing: u64,
    /// `Quarantined` events sent.
    pub quarantined: u64,
    /// Volume files that vanished before they could be read.
    pub removed: u64,
    /// Files ignored for their suffix or an unparseable name (each path once).
    pub ignored: u64,
    /// Whether the folder is being polled (poll mode, or a fallback).
    pub polling: bool,
}

/// Shared counters behind [`IngestStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub received: AtomicU64,
    pub released: AtomicU64,
    pub late: AtomicU64,
    pub duplicates: AtomicU64,
    pub missing: AtomicU64,
    pub quarantined: AtomicU64,
    pub removed: AtomicU64,
    pub ignored: AtomicU64,
    pub polling: AtomicBool,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> IngestStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IngestStats {
            received: g(&self.received),
            released: g(&self.released),
            late: g(&self.late),
            duplicates: g(&self.duplicates),
            missing: g(&self.missing),
            quarantined: g(&self.quarantined),
            removed: g(&self.removed),
            ignored: g(&self.ignored),
            polling: self.polling.load(Ordering::Relaxed),
        }
    }
}

/// The running stage. Dropping it stops it as [`IngestHandle::stop`] does.
#[derive(Debug)]
pub struct IngestHandle {
    tx: Sender<watch::Msg>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl IngestHandle {
    /// The counters now (lock-free loads).
    pub fn stats(&self) -> IngestStats {
        self.counters.snapshot()
    }

    /// Stop watching, make a last attempt at files still pending, release
    /// held volumes, declare the remaining gaps up to the highest index
    /// seen, end the open run with `RunEnded`, and wait for the thread.
    /// Waits for downstream to accept those last events (warning while it
    /// does) unless the receiver has been dropped.
    pub fn stop(mut self) -> Result<IngestStats, IngestError> {
        self.shutdown()?;
        Ok(self.stats())
    }

    fn shutdown(&mut self) -> Result<(), IngestError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.tx.send(watch::Msg::Stop);
        thread.join().map_err(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            IngestError::Panicked(what)
        })
    }
}

impl Drop for IngestHandle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("{e}");
        }
    }
}

/// Start the ingest stage: check the configuration, start watching
/// `config.watch_dir`, and run the stage on its own thread, sending events
/// to `out`. Files already in the folder are taken too.
///
/// `out` should be bounded: when it is full, ingest logs that downstream is
/// behind and waits (volumes are never dropped).
pub fn spawn(config: IngestConfig, out: Sender<IngestEvent>) -> Result<IngestHandle, IngestError> {
    spawn_resumed(config, out, Vec::new())
}

/// [`spawn`] for a resumed session: `resumed` says, per run, what was
/// settled before the restart; those files are not processed again, the
/// open run continues where it stopped (no second `RunStarted`), and files
/// that came while the daemon was down are taken as usual.
pub fn spawn_resumed(
    config: IngestConfig,
    out: Sender<IngestEvent>,
    resumed: Vec<reorder::ResumedRun>,
) -> Result<IngestHandle, IngestError> {
    let counters = Arc::new(Counters::default());
    let (tx, thread) = stage::start(config, out, counters.clone(), resumed)?;
    Ok(IngestHandle {
        tx,
        thread: Some(thread),
        counters,
    })
}
