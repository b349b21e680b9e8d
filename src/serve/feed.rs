//! The feed: what the outside world is told about the session, one JSON
//! object per line.
//!
//! In: [`PipelineEvent`]s. Out: [`FeedMessage`]s — the one vocabulary the
//! dashboard (server-sent events), the feedback protocol (TCP and UDP) and
//! the per-trial result files all speak, so a value means the same thing
//! wherever a client reads it. Every message is an object with a `type`:
//!
//! | `type` | when | what |
//! | --- | --- | --- |
//! | `volume` | each realigned volume | run, index, motion (MCFLIRT order), FD (and whether it is over the threshold), DVARS, mean signal in the mask, per-stage latency |
//! | `feedback` | each volume with neurofeedback regions/decoders | per name: value and smoothed value |
//! | `ingest` | a gap, late file, duplicate, quarantined or unrealignable file | what happened, where, why |
//! | `trial` | a trial's fast decode | top-k ids and scores, the decoded value, rank of the image shown |
//! | `reconstruction` | a trial's reconstruction | the PNG's path (result files) and URL (dashboard) |
//! | `skipped` | a trial without beta, retrieval or reconstruction | why |
//! | `run` | a run starts or ends | its counts so far |
//! | `notice` | anything the operator should read | text |
//! | `decoder` | models loaded and warm | graphs, providers, warm-up latency |

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::types::messages::{IngestEvent, MissingReason, PipelineEvent, VolumeKey};

/// Which stream a message belongs to (what a client subscribes to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    /// Per volume: `volume`, `feedback`, `ingest`.
    Volume,
    /// Per trial: `trial`, `reconstruction`, `skipped`.
    Trial,
    /// Per run and session: `run`, `notice`, `decoder`.
    Run,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 3] = [Topic::Volume, Topic::Trial, Topic::Run];
}

pub use crate::types::messages::VolumeLatency;

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One realigned volume.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeMsg {
    /// Run number.
    pub run: u32,
    /// Volume index.
    pub index: u32,
    /// Wall-clock time the file was first seen (Unix seconds).
    pub t: f64,
    /// `[rx, ry, rz]` radians then `[tx, ty, tz]` mm (MCFLIRT's order).
    pub motion: [f64; 6],
    /// Framewise displacement, mm (none for a run's first volume).
    pub fd: Option<f64>,
    /// FD above the configured threshold.
    pub fd_over: bool,
    /// DVARS, signal units.
    pub dvars: Option<f64>,
    /// DVARS, % of the reference's mean.
    pub dvars_pct: Option<f64>,
    /// Mean realigned signal inside the session mask.
    pub mean: f64,
    /// Arrived after its index had been declared missing.
    pub late: bool,
    /// Per-step latency.
    pub latency: VolumeLatency,
}

/// One neurofeedback value.
#[derive(Debug, Clone, Serialize)]
pub struct FeedbackEntry {
    /// Region or decoder name.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Smoothed.
    pub smoothed: f64,
}

/// A retrieval candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// Image id.
    pub id: String,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// Everything the feed says; serialised with a `type` field.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FeedMessage {
    /// A realigned volume.
    Volume(VolumeMsg),
    /// Neurofeedback values of a volume.
    Feedback {
        /// Run number.
        run: u32,
        /// Volume index.
        index: u32,
        /// Per region/decoder.
        values: Vec<FeedbackEntry>,
    },
    /// Something ingest or realign reports about a file or index.
    Ingest {
        /// `missing`, `quarantined`, `duplicate` or `realign_failed`.
        event: &'static str,
        /// Run number, when known.
        run: Option<u32>,
        /// Volume index, when known.
        index: Option<u32>,
        /// The file, when there is one.
        file: Option<String>,
        /// Why.
        reason: String,
    },
    /// A trial's fast decode.
    Trial {
        /// Run number.
        run: u32,
        /// Trial number within the run.
        trial: usize,
        /// The image shown, when known.
        image_id: Option<String>,
        /// Best candidates, best first.
        top: Vec<Candidate>,
        /// The decoded value for neurofeedback: the best candidate's cosine
        /// similarity (how confidently the pattern matches any image).
        value: f32,
        /// Rank (1 = best) of the image shown, when it is a candidate.
        true_rank: Option<usize>,
        /// Candidates searched.
        bank_size: usize,
        /// Trigger volume's file seen → this result, ms.
        latency_ms: Option<f64>,
    },
    /// A trial's reconstruction.
    Reconstruction {
        /// Run number.
        run: u32,
        /// Trial number within the run.
        trial: usize,
        /// The image shown, when known.
        image_id: Option<String>,
        /// The PNG on disk (the result file when result files are on, else
        /// the session store's copy).
        path: String,
        /// Where the dashboard serves it.
        url: String,
        /// Trigger volume's file seen → this result, ms.
        latency_ms: Option<f64>,
    },
    /// A trial that got no beta, retrieval or reconstruction.
    Skipped {
        /// Run number.
        run: u32,
        /// Trial number within the run.
        trial: usize,
        /// The image shown, when known.
        image_id: Option<String>,
        /// `beta`, `decode` or `reconstruction`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A run's status.
    Run {
        /// Run number.
        run: u32,
        /// `started` or `ended`.
        status: &'static str,
    },
    /// Text for the operator.
    Notice {
        /// The text.
        text: String,
    },
    /// The decoder is loaded and warm.
    Decoder {
        /// Subject.
        subject: String,
        /// ONNX Runtime version.
        runtime: String,
        /// Per graph: role, provider, warm median ms.
        graphs: Vec<(String, String, f64)>,
    },
}

impl FeedMessage {
    /// The stream it belongs to.
    pub fn topic(&self) -> Topic {
        match self {
            FeedMessage::Volume(_) | FeedMessage::Feedback { .. } | FeedMessage::Ingest { .. } => {
                Topic::Volume
            }
            FeedMessage::Trial { .. }
            | FeedMessage::Reconstruction { .. }
            | FeedMessage::Skipped { .. } => Topic::Trial,
            FeedMessage::Run { .. } | FeedMessage::Notice { .. } | FeedMessage::Decoder { .. } => {
                Topic::Run
            }
        }
    }

    /// One line of JSON (no newline).
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail; an empty object keeps
        // the line protocol intact if it ever did.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// The file name the session store and result files give a trial's
/// reconstruction.
pub fn recon_file_name(run: u32, trial: usize) -> String {
    format!("run-{run:02}_trial-{trial:03}.png")
}

/// What the conversion needs to know beyond the event.
#[derive(Debug, Clone)]
pub struct FeedContext {
    /// FD threshold, mm.
    pub fd_threshold_mm: f64,
    /// Where a reconstruction's PNG is for clients (result-file folder, or
    /// the store's `decode/recon`).
    pub recon_dir: std::path::PathBuf,
}

fn key_parts(key: Option<VolumeKey>) -> (Option<u32>, Option<u32>) {
    (key.map(|k| k.run), key.map(|k| k.index))
}

/// The messages an event gives (none for events clients do not need).
pub fn from_event(ev: &PipelineEvent, ctx: &FeedContext) -> Option<FeedMessage> {
    Some(match ev {
        PipelineEvent::Realigned(r) => {
            let n = r.masked.len().max(1) as f64;
            let mean = r.masked.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            FeedMessage::Volume(VolumeMsg {
                run: r.key.run,
                index: r.key.index,
                t: unix(r.ingest.first_seen_wall),
                motion: r.params.0,
                fd: r.fd,
                fd_over: r.fd.is_some_and(|fd| fd > ctx.fd_threshold_mm),
                dvars: r.dvars,
                dvars_pct: r.dvars_pct,
                mean,
                late: r.late,
                latency: VolumeLatency::of(r),
            })
        }
        PipelineEvent::Feedback(f) => FeedMessage::Feedback {
            run: f.key.run,
            index: f.key.index,
            values: f
                .values
                .iter()
                .map(|v| FeedbackEntry {
                    name: v.name.clone(),
                    value: v.value,
                    smoothed: v.smoothed,
                })
                .collect(),
        },
        PipelineEvent::RealignFailed { key, path, reason } => FeedMessage::Ingest {
            event: "realign_failed",
            run: Some(key.run),
            index: Some(key.index),
            file: Some(path.display().to_string()),
            reason: reason.clone(),
        },
        PipelineEvent::Ingest(ie) => match ie {
            IngestEvent::RunStarted { run, .. } => FeedMessage::Run {
                run: *run,
                status: "started",
            },
            IngestEvent::RunEnded { run } => FeedMessage::Run {
                run: *run,
                status: "ended",
            },
            IngestEvent::Missing { key, reason } => FeedMessage::Ingest {
                event: "missing",
                run: Some(key.run),
                index: Some(key.index),
                file: None,
                reason: match reason {
                    MissingReason::NotReceived => "not received".into(),
                    MissingReason::Quarantined(why) => format!("quarantined: {why}"),
                    MissingReason::StillIncomplete => "still incomplete".into(),
                },
            },
            IngestEvent::Duplicate { key, path } => FeedMessage::Ingest {
                event: "duplicate",
                run: Some(key.run),
                index: Some(key.index),
                file: Some(path.display().to_string()),
                reason: "a second file for a volume already received; ignored".into(),
            },
            IngestEvent::Quarantined {
                key, path, reason, ..
            } => {
                let (run, index) = key_parts(*key);
                FeedMessage::Ingest {
                    event: "quarantined",
                    run,
                    index,
                    file: Some(path.display().to_string()),
                    reason: reason.clone(),
                }
            }
            IngestEvent::Notice(text) => FeedMessage::Notice { text: text.clone() },
            IngestEvent::Volume(_) | IngestEvent::Heartbeat(_) => return None,
        },
        PipelineEvent::Notice(text) => FeedMessage::Notice { text: text.clone() },
        PipelineEvent::TrialSkipped {
            run,
            trial,
            event,
            reason,
        } => FeedMessage::Skipped {
            run: *run,
            trial: *trial,
            image_id: event.stim_id.clone(),
            what: "beta",
            reason: reason.clone(),
        },
        PipelineEvent::DecodeSkipped {
            run,
            trial,
            stim_id,
            what,
            reason,
        } => FeedMessage::Skipped {
            run: *run,
            trial: *trial,
            image_id: stim_id.clone(),
            what,
            reason: reason.clone(),
        },
        PipelineEvent::DecoderReady(d) => FeedMessage::Decoder {
            subject: d.subject.clone(),
            runtime: d.version.clone(),
            graphs: d
                .graphs
                .iter()
                .map(|g| {
                    (
                        g.role.to_string(),
                        g.provider.clone(),
                        g.median_seconds * 1e3,
                    )
                })
                .collect(),
        },
        PipelineEvent::Decoded(t) => FeedMessage::Trial {
            run: t.run,
            trial: t.trial,
            image_id: t.stim_id.clone(),
            value: t.top.first().map_or(f32::NAN, |(_, s)| *s),
            top: t
                .top
                .iter()
                .map(|(id, score)| Candidate {
                    id: id.clone(),
                    score: *score,
                })
                .collect(),
            true_rank: t.true_rank,
            bank_size: t.bank_size,
            latency_ms: t.since_trigger.map(|s| s * 1e3),
        },
        PipelineEvent::Reconstructed(r) => {
            let name = recon_file_name(r.run, r.trial);
            FeedMessage::Reconstruction {
                run: r.run,
                trial: r.trial,
                image_id: r.stim_id.clone(),
                path: ctx.recon_dir.join(&name).display().to_string(),
                url: format!("/recon/{name}"),
                latency_ms: r.since_trigger.map(|s| s * 1e3),
            }
        }
        PipelineEvent::ReferenceReady { source, .. } => FeedMessage::Notice {
            text: format!("session reference: {source}"),
        },
        PipelineEvent::Beta(_) => return None,
    })
}
