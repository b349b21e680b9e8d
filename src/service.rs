//! Running under systemd: readiness, watchdog and status.
//!
//! In: the moment the pipeline is started (models loaded and warm) and the
//! pipeline's heartbeats ([`crate::pipeline::Pipeline::heartbeats`]). Out:
//! `sd_notify` messages — `READY=1` once, `WATCHDOG=1` for every heartbeat
//! that made it through every stage, `STATUS=` lines, `STOPPING=1` — and an
//! error in the log when the heartbeat stops. Without a service manager
//! (`NOTIFY_SOCKET` unset) every call is a no-op.
//!
//! The watchdog is fed from the end of the pipeline, not from a timer: a
//! stage that hangs (a stuck file system, a wedged GPU call) stops the
//! heartbeats, systemd's `WatchdogSec` runs out, and `Restart=on-failure`
//! restarts the daemon, which resumes the session.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use sd_notify::NotifyState;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        // The service manager's socket is gone or full: nothing to do but
        // say so; the daemon itself is fine.
        tracing::warn!("sd_notify: {e}");
    }
}

/// Tell the service manager the daemon is ready, with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tell the service manager the daemon is stopping.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("draining the pipeline"),
    ]);
}

/// The watchdog period systemd asked for, if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Feed the watchdog from `heartbeats` on a thread of its own, until the
/// pipeline stops (the channel closes). Logs an error when no heartbeat has
/// arrived for `stall_after` (by default half the watchdog period, or 10 s),
/// and once more when they resume.
pub fn watch(
    heartbeats: Receiver<Instant>,
    stall_after: Option<Duration>,
) -> Option<JoinHandle<()>> {
    let period = watchdog_period();
    let stall_after = stall_after
        .or(period.map(|p| p / 2))
        .unwrap_or(Duration::from_secs(10));
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut stalled_since: Option<Instant> = None;
            let mut last = Instant::now();
            loop {
                match heartbeats.recv_timeout(stall_after) {
                    Ok(sent) => {
                        if let Some(since) = stalled_since.take() {
                            tracing::warn!(
                                "pipeline heartbeat back after {:.1} s",
                                since.elapsed().as_secs_f64() + stall_after.as_secs_f64()
                            );
                        }
                        last = Instant::now();
                        let transit = last.saturating_duration_since(sent);
                        if period.is_some() {
                            notify(&[NotifyState::Watchdog]);
                        }
                        if transit > stall_after {
                            tracing::warn!(
                                "a heartbeat took {:.1} s to cross the pipeline",
                                transit.as_secs_f64()
                            );
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if stalled_since.is_none() {
                            stalled_since = Some(Instant::now());
                            tracing::error!(
                                "pipeline stalled: no heartbeat for {:.1} s{}",
                                last.elapsed().as_secs_f64(),
                                if period.is_some() {
                                    "; the service watchdog will restart the daemon if it stays stuck"
                                } else {
                                    ""
                                }
                            );
                            notify(&[NotifyState::Status("pipeline stalled")]);
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })
        .map_err(|e| tracing::error!("could not start the watchdog thread: {e}"))
        .ok()
}
