//! Noticing files in the export folder.
//!
//! In: the folder, the watch mode and where native events come from.
//! Out: [`Msg`]s on the stage's internal channel — "look at this path" —
//! from notify's native watcher or its poll watcher, plus [`scan`], the
//! directory listing the stage uses at start-up, for `auto` mode's
//! cross-check and after an event-queue overflow.
//!
//! Events only say *where* to look; the stage decides what a file is by
//! looking at it, so duplicate, spurious or coalesced events are harmless.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::Sender;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};

use super::config::EventSource;

/// Which watcher produced a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The native (inotify, FSEvents, ...) watcher.
    Native,
    /// notify's poll watcher.
    Poll,
}

/// What the stage thread receives.
#[derive(Debug)]
pub enum Msg {
    /// Something happened to `path`.
    Path {
        /// The file.
        path: PathBuf,
        /// Who said so.
        origin: Origin,
        /// The writer probably finished (created, closed, renamed, removed):
        /// look now rather than at the next retry.
        urgent: bool,
    },
    /// The watcher lost events (queue overflow): list the folder.
    Rescan,
    /// The watcher reported an error.
    Error(String),
    /// `IngestHandle::stop` was called.
    Stop,
}

/// A running watcher; dropping it stops it.
#[allow(dead_code)] // the watchers are held only to keep them running
pub enum Watching {
    /// Native events.
    Native(RecommendedWatcher),
    /// Native events that never come (emulated network share).
    Silent,
    /// Polling.
    Poll(PollWatcher),
}

impl Watching {
    /// Whether changes are found by polling.
    pub fn is_polling(&self) -> bool {
        matches!(self, Watching::Poll(_))
    }
}

fn handler(tx: Sender<Msg>, origin: Origin) -> impl FnMut(notify::Result<Event>) + Send + 'static {
    move |res: notify::Result<Event>| {
        let event = match res {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.send(Msg::Error(e.to_string()));
                return;
            }
        };
        if event.need_rescan() {
            let _ = tx.send(Msg::Rescan);
        }
        let urgent = match event.kind {
            // Reads (ours included: decoding opens the file) say nothing
            // about new data; passing them on would make every attempt
            // trigger the next, and would make a share whose only inotify
            // events are our own reads look like a working watcher.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => return,
            EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => false,
            _ => true,
        };
        for path in event.paths {
            let _ = tx.send(Msg::Path {
                path,
                origin,
                urgent,
            });
        }
    }
}

/// Start the native watcher on `dir` (or the silent stand-in).
pub fn start_native(dir: &Path, tx: Sender<Msg>, source: EventSource) -> notify::Result<Watching> {
    match source {
        EventSource::Silent => Ok(Watching::Silent),
        EventSource::Broken => Err(notify::Error::generic(
            "native watcher unavailable (emulated failure)",
        )),
        EventSource::Os => {
            let mut w =
                RecommendedWatcher::new(handler(tx, Origin::Native), notify::Config::default())?;
            w.watch(dir, RecursiveMode::NonRecursive)?;
            Ok(Watching::Native(w))
        }
    }
}

/// Start notify's poll watcher on `dir`, comparing size-and-mtime listings
/// every `interval`.
pub fn start_poll(dir: &Path, tx: Sender<Msg>, interval: Duration) -> notify::Result<Watching> {
    let cfg = notify::Config::default().with_poll_interval(interval);
    let mut w = PollWatcher::new(handler(tx, Origin::Poll), cfg)?;
    w.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(Watching::Poll(w))
}

/// The regular files directly in `dir`, sorted by name (so that files
/// found together are registered in a stable order).
pub fn scan(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        // file_type() does not follow symlinks; a link to a file counts.
        let is_file = match entry.file_type() {
            Ok(t) if t.is_file() => true,
            Ok(t) if t.is_symlink() => entry.path().is_file(),
            _ => false,
        };
        if is_file {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}
