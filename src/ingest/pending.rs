//! Files seen but not taken yet: when to try again, when to give up.
//!
//! In: for each attempt, the file's size and mtime as observed, and why the
//! attempt failed. Out: a [`Verdict`] — retry at some instant, or give up
//! with a reason (the caller quarantines).
//!
//! The rule that makes partial files safe: a failure only counts against a
//! file while it stays *unchanged*. Every change of size or mtime restarts
//! the clock, so a file growing slowly over a network share is retried for
//! as long as it grows, and quarantined only after it has sat unchanged for
//! `partial_timeout` and still does not decode. A file that decodes but fails
//! validation was complete; it gets a short settle time (a rewrite in
//! progress could still change it) and is then given up on.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::types::messages::VolumeKey;

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, when the file system gives one.
    pub mtime: Option<SystemTime>,
}

impl FileStat {
    /// From `std::fs::metadata`.
    pub fn of(meta: &std::fs::Metadata) -> FileStat {
        FileStat {
            size: meta.len(),
            mtime: meta.modified().ok(),
        }
    }
}

/// Why an attempt did not produce a volume.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The reader failed; `may_be_incomplete` as the reader says.
    Decode {
        /// The reader's message.
        message: String,
        /// More bytes could fix it.
        may_be_incomplete: bool,
    },
    /// It decoded but is not a usable volume of its run.
    Invalid(String),
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Try again at this instant.
    RetryAt(Instant),
    /// Give up: quarantine with this reason.
    GiveUp(String),
}

/// How long to wait and retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Between attempts.
    pub retry_interval: Duration,
    /// Unchanged-and-undecodable time before giving up.
    pub partial_timeout: Duration,
    /// Unchanged time before giving up on a file that decodes but is invalid.
    pub invalid_settle: Duration,
}

/// A file that is not taken yet.
#[derive(Debug, Clone)]
pub struct PendingFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its accepted suffix (kept for the quarantine name).
    pub suffix: String,
    /// What its name says.
    pub key: VolumeKey,
    /// When it was first noticed.
    pub first_seen: Instant,
    /// The same, wall clock.
    pub first_seen_wall: SystemTime,
    /// Decode attempts so far.
    pub attempts: u32,
    /// Last observed size and mtime.
    pub stat: Option<FileStat>,
    /// Since when `stat` has not changed.
    pub stable_since: Instant,
    /// When the next attempt is due.
    pub next_try: Instant,
    /// When the last attempt ran.
    pub last_attempt: Option<Instant>,
    /// The last failure, for the final report.
    pub last_failure: Option<Failure>,
    /// When this is a new version of a file already taken: the checksum of
    /// the volume taken from it, to tell a rewrite from a touch.
    pub rewrite_of: Option<u64>,
    /// A DICOM file: its run and volume come from its header once decoded
    /// (`key` is the name's, a cross-check).
    pub dicom: bool,
    /// Whether `key` is registered with the ordering logic as a candidate
    /// (always for NIfTI; for DICOM once its name or header says which
    /// volume it is).
    pub registered: bool,
}

impl PendingFile {
    /// A file first noticed at `now`, to be tried at once.
    pub fn new(path: PathBuf, suffix: String, key: VolumeKey, now: Instant) -> PendingFile {
        PendingFile {
            path,
            suffix,
            key,
            first_seen: now,
            first_seen_wall: SystemTime::now(),
            attempts: 0,
            stat: None,
            stable_since: now,
            next_try: now,
            last_attempt: None,
            last_failure: None,
            rewrite_of: None,
            dicom: false,
            registered: true,
        }
    }

    /// Record the size and mtime seen at `now`; returns whether they changed.
    pub fn observe(&mut self, stat: FileStat, now: Instant) -> bool {
        let changed = self.stat != Some(stat);
        if changed {
            self.stat = Some(stat);
            self.stable_since = now;
        }
        changed
    }

    /// An event arrived for this file: try sooner. `urgent` events (the
    /// writer closed or renamed the file) are acted on at once; a stream of
    /// write events is thinned to one attempt per retry interval, so that a
    /// file written in many chunks is not re-read for every chunk.
    pub fn nudge(&mut self, urgent: bool, now: Instant, retry_interval: Duration) {
        let at = match (urgent, self.last_attempt) {
            (false, Some(last)) => (last + retry_interval).max(now),
            _ => now,
        };
        self.next_try = self.next_try.min(at);
    }

    /// After a failed attempt at `now`: retry or give up.
    pub fn verdict(&self, failure: &Failure, now: Instant, policy: &RetryPolicy) -> Verdict {
        let unchanged = now.saturating_duration_since(self.stable_since);
        let size = self.stat.map_or_else(
            || "unknown size".to_string(),
            |s| format!("{} bytes", s.size),
        );
        match failure {
            Failure::Decode {
                message,
                may_be_incomplete,
            } => {
                if unchanged >= policy.partial_timeout {
                    let what = if *may_be_incomplete {
                        "incomplete or corrupt"
                    } else {
                        "unreadable"
                    };
                    Verdict::GiveUp(format!(
                        "{what}: {message} (unchanged for {:.1} s at {size}, {} decode attempts)",
                        unchanged.as_secs_f64(),
                        self.attempts
                    ))
                } else {
                    Verdict::RetryAt(now + policy.retry_interval)
                }
            }
            Failure::Invalid(message) => {
                if unchanged >= policy.invalid_settle {
                    Verdict::GiveUp(message.clone())
                } else {
                    Verdict::RetryAt(now + policy.retry_interval)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retry_interval: Duration::from_millis(50),
            partial_timeout: Duration::from_secs(10),
            invalid_settle: Duration::from_millis(100),
        }
    }

    fn stat(size: u64) -> FileStat {
        FileStat {
            size,
            mtime: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(size)),
        }
    }

    fn cut() -> Failure {
        Failure::Decode {
            message: "truncated".into(),
            may_be_incomplete: true,
        }
    }

    #[test]
    fn a_growing_file_is_never_given_up_on() {
        let t0 = Instant::now();
        let key = VolumeKey { run: 1, index: 0 };
        let mut f = PendingFile::new("a.nii".into(), ".nii".into(), key, t0);
        for step in 0..100u64 {
            let now = t0 + Duration::from_secs(step);
            f.observe(stat(step * 100), now);
            f.attempts += 1;
            assert_eq!(
                f.verdict(&cut(), now, &policy()),
                Verdict::RetryAt(now + Duration::from_millis(50))
            );
        }
    }

    #[test]
    fn an_unchanged_undecodable_file_is_given_up_after_partial_timeout() {
        let t0 = Instant::now();
        let key = VolumeKey { run: 1, index: 0 };
        let mut f = PendingFile::new("a.nii".into(), ".nii".into(), key, t0);
        assert!(f.observe(stat(10), t0));
        let later = t0 + Duration::from_millis(9_999);
        assert!(!f.observe(stat(10), later));
        assert!(matches!(
            f.verdict(&cut(), later, &policy()),
            Verdict::RetryAt(_)
        ));
        let now = t0 + Duration::from_secs(10);
        f.attempts = 7;
        let Verdict::GiveUp(reason) = f.verdict(&cut(), now, &policy()) else {
            panic!("should give up");
        };
        assert_eq!(
            reason,
            "incomplete or corrupt: truncated (unchanged for 10.0 s at 10 bytes, 7 decode attempts)"
        );
        let garbage = Failure::Decode {
            message: "not a NIfTI file".into(),
            may_be_incomplete: false,
        };
        let Verdict::GiveUp(reason) = f.verdict(&garbage, now, &policy()) else {
            panic!("should give up");
        };
        assert!(
            reason.starts_with("unreadable: not a NIfTI file"),
            "{reason}"
        );
    }

    #[test]
    fn an_invalid_volume_settles_briefly_then_is_given_up() {
        let t0 = Instant::now();
        let key = VolumeKey { run: 1, index: 0 };
        let mut f = PendingFile::new("a.nii".into(), ".nii".into(), key, t0);
        f.observe(stat(10), t0);
        let bad = Failure::Invalid("3 NaN/Inf voxels, first at (1, 2, 3)".into());
        assert!(matches!(
            f.verdict(&bad, t0 + Duration::from_millis(99), &policy()),
            Verdict::RetryAt(_)
        ));
        assert_eq!(
            f.verdict(&bad, t0 + Duration::from_millis(100), &policy()),
            Verdict::GiveUp("3 NaN/Inf voxels, first at (1, 2, 3)".into())
        );
    }

    #[test]
    fn write_events_are_thinned_but_close_events_are_not() {
        let t0 = Instant::now();
        let key = VolumeKey { run: 1, index: 0 };
        let mut f = PendingFile::new("a.nii".into(), ".nii".into(), key, t0);
        let retry = Duration::from_millis(50);
        f.last_attempt = Some(t0);
        f.next_try = t0 + Duration::from_secs(1);
        f.nudge(false, t0 + Duration::from_millis(10), retry);
        assert_eq!(f.next_try, t0 + retry);
        f.nudge(true, t0 + Duration::from_millis(20), retry);
        assert_eq!(f.next_try, t0 + Duration::from_millis(20));
    }
}
