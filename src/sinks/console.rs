//! Console sink: one line per volume for the operator's terminal.
//!
//! In: [`PipelineEvent`]s. Out: lines on stdout — motion (degrees and mm),
//! FD, DVARS and latency per volume, and every gap, duplicate, late or
//! quarantined file, so a glance at the terminal says whether the scan is usable.

use std::io::Write;

use crate::types::messages::{IngestEvent, MissingReason, PipelineEvent};

/// Prints a live line per event.
pub struct Console<W: Write> {
    out: W,
    fd_threshold_mm: f64,
    over_threshold: usize,
    volumes: usize,
}

impl<W: Write> Console<W> {
    /// Write to `out`; volumes with FD above `fd_threshold_mm` are marked.
    pub fn new(out: W, fd_threshold_mm: f64) -> Console<W> {
        Console {
            out,
            fd_threshold_mm,
            over_threshold: 0,
            volumes: 0,
        }
    }

    /// Print one event.
    pub fn handle(&mut self, event: &PipelineEvent) -> std::io::Result<()> {
        match event {
            PipelineEvent::ReferenceReady {
                source,
                mask_voxels,
                cross_session,
                ..
            } => {
                writeln!(self.out, "reference: {source}; mask {mask_voxels} voxels")?;
                if let Some(c) = cross_session {
                    let p = c.params.0;
                    writeln!(
                        self.out,
                        "calibration grid: the calibration reference lies {:.2} {:.2} {:.2} deg, {:.2} {:.2} {:.2} mm from this session's (registered in {:.0} ms); volumes are resampled onto it",
                        p[0].to_degrees(),
                        p[1].to_degrees(),
                        p[2].to_degrees(),
                        p[3],
                        p[4],
                        p[5],
                        c.seconds * 1e3
                    )?;
                }
                Ok(())
            }
            PipelineEvent::Realigned(r) => {
                self.volumes += 1;
                let p = r.params.0;
                let fd =
                    r.fd.map_or_else(|| "  n/a".to_string(), |v| format!("{v:>5.2}"));
                let dvars = r
                    .dvars_pct
                    .map_or_else(|| "  n/a".to_string(), |v| format!("{v:>5.2}"));
                let flag = if r.fd.is_some_and(|v| v > self.fd_threshold_mm) {
                    self.over_threshold += 1;
                    "  << FD over threshold"
                } else {
                    ""
                };
                let latency = r
                    .realigned_at
                    .saturating_duration_since(r.ingest.first_seen)
                    .as_secs_f64()
                    * 1e3;
                writeln!(
                    self.out,
                    "run {:>2} vol {:>4}{} | rot {:>7.3} {:>7.3} {:>7.3} deg | trans {:>6.2} {:>6.2} {:>6.2} mm | FD {fd} | DVARS {dvars}% | {:>5.1} ms{flag}",
                    r.key.run,
                    r.key.index,
                    if r.late { " (late)" } else { "" },
                    p[0].to_degrees(),
                    p[1].to_degrees(),
                    p[2].to_degrees(),
                    p[3],
                    p[4],
                    p[5],
                    latency,
                )
            }
            PipelineEvent::Beta(b) => {
                let latency = b
                    .trigger_seen
                    .map(|t| {
                        format!(
                            ", {:.1} ms after the trigger volume arrived",
                            b.ready.saturating_duration_since(t).as_secs_f64() * 1e3
                        )
                    })
                    .unwrap_or_default();
                writeln!(
                    self.out,
                    "run {:>2} trial {:>3} ({}, onset {:.1} s): beta from {} frames{}{}{}{}",
                    b.run,
                    b.trial,
                    b.event.stim_id.as_deref().unwrap_or(&b.event.trial_type),
                    b.event.onset,
                    b.frames,
                    latency,
                    if b.presentations > 1 {
                        format!(", presentation {}", b.presentations)
                    } else {
                        String::new()
                    },
                    if b.delayed {
                        ", delayed (too few frames at first)"
                    } else {
                        ""
                    },
                    if b.warmup { ", warm-up run" } else { "" },
                )
            }
            PipelineEvent::TrialSkipped {
                run,
                trial,
                event,
                reason,
            } => writeln!(
                self.out,
                "run {run:>2} trial {trial:>3} ({}, onset {:.1} s): NO BETA — {reason}",
                event.stim_id.as_deref().unwrap_or(&event.trial_type),
                event.onset
            ),
            PipelineEvent::Feedback(f) => {
                let parts: Vec<String> = f
                    .values
                    .iter()
                    .map(|v| format!("{} {:.3} (smoothed {:.3})", v.name, v.value, v.smoothed))
                    .collect();
                writeln!(self.out, "    feedback {}: {}", f.key, parts.join(" | "))
            }
            PipelineEvent::Notice(t) => writeln!(self.out, "notice: {t}"),
            PipelineEvent::DecoderReady(r) => {
                writeln!(
                    self.out,
                    "decoder ready: {} for subject {} on ONNX Runtime {} ({})",
                    r.model.display(),
                    r.subject,
                    r.version,
                    r.library.display()
                )?;
                for g in &r.graphs {
                    writeln!(
                        self.out,
                        "    {:<15} {:<8} warm-up {:>8.2} ms, then {:>8.3} ms",
                        g.role,
                        g.provider,
                        g.first_seconds * 1e3,
                        g.median_seconds * 1e3
                    )?;
                }
                Ok(())
            }
            PipelineEvent::Decoded(d) => {
                let top: Vec<String> = d
                    .top
                    .iter()
                    .take(3)
                    .map(|(id, s)| format!("{id} {s:.2}"))
                    .collect();
                let truth = match (&d.stim_id, d.true_rank) {
                    (Some(id), Some(r)) => format!(" | shown {id}: rank {r}/{}", d.bank_size),
                    (Some(id), None) => format!(" | shown {id} (not in the bank)"),
                    _ => String::new(),
                };
                writeln!(
                    self.out,
                    "run {:>2} trial {:>3}: retrieval {}{truth} | {:.1} ms{}",
                    d.run,
                    d.trial,
                    top.join(", "),
                    d.seconds * 1e3,
                    d.since_trigger
                        .map(|t| format!(", {:.0} ms after the trigger volume", t * 1e3))
                        .unwrap_or_default()
                )
            }
            PipelineEvent::Reconstructed(r) => writeln!(
                self.out,
                "run {:>2} trial {:>3}: reconstruction {}x{} in {:.0} ms ({} prior + {} decoder steps, queued {:.0} ms, seeds {}/{})",
                r.run,
                r.trial,
                r.chw.2,
                r.chw.1,
                r.seconds * 1e3,
                r.prior_steps.len(),
                r.decoder_steps.len(),
                r.queued_seconds * 1e3,
                r.prior_seed,
                r.decoder_seed
            ),
            PipelineEvent::DecodeSkipped {
                run,
                trial,
                what,
                reason,
                ..
            } => writeln!(
                self.out,
                "run {run:>2} trial {trial:>3}: NO {} — {reason}",
                what.to_uppercase()
            ),
            PipelineEvent::RealignFailed { key, path, reason } => {
                writeln!(
                    self.out,
                    "{key}: REALIGN FAILED ({}): {reason}",
                    path.display()
                )
            }
            PipelineEvent::Ingest(ev) => match ev {
                IngestEvent::RunStarted { run, .. } => writeln!(self.out, "== run {run} started"),
                IngestEvent::RunEnded { run } => writeln!(
                    self.out,
                    "== run {run} ended ({} volumes so far, {} with FD > {} mm)",
                    self.volumes, self.over_threshold, self.fd_threshold_mm
                ),
                IngestEvent::Missing { key, reason } => match reason {
                    MissingReason::NotReceived => {
                        writeln!(self.out, "{key}: MISSING (not received)")
                    }
                    MissingReason::Quarantined(r) => {
                        writeln!(self.out, "{key}: MISSING (file quarantined: {r})")
                    }
                    MissingReason::StillIncomplete => writeln!(
                        self.out,
                        "{key}: MISSING for now (file still being written; delivered late if it completes)"
                    ),
                },
                IngestEvent::Duplicate { key, path } => {
                    writeln!(self.out, "{key}: duplicate ignored ({})", path.display())
                }
                IngestEvent::Quarantined { path, reason, .. } => {
                    writeln!(self.out, "QUARANTINED {}: {reason}", path.display())
                }
                IngestEvent::Notice(t) => writeln!(self.out, "notice: {t}"),
                IngestEvent::Volume(_) | IngestEvent::Heartbeat(_) => Ok(()),
            },
        }
    }
}

impl<W: Write + Send + 'static> crate::stage::Sink for Console<W> {
    type Request = std::convert::Infallible;
    const NAME: &'static str = "console";
    /// A stuck terminal must never hold up the scan.
    const DELIVERY: crate::stage::Delivery = crate::stage::Delivery::Lossy;

    fn deliver(&mut self, event: &PipelineEvent) -> std::io::Result<()> {
        self.handle(event)
    }
}
