//! `boldstream check --config FILE`: the pre-flight an operator runs before
//! a session (and the service runs before it starts).
//!
//! In: a configuration file. Out: a [`CheckReport`] — what the daemon will
//! do, line by line (watch folder and mode, reference, mask and output
//! grid, GLM and z-scoring, decoding: model, subject, ONNX Runtime, device,
//! per-graph warm-up latency) — or the first problem found, naming the file
//! or setting: a config error with its line, a folder that is missing or
//! cannot be read or written, a model or subject that does not fit the
//! mask, an ONNX Runtime that cannot be loaded or has no GPU when one is
//! required. Nothing is written except a probe file that is removed again.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;
use crate::pipeline::Pipeline;

/// What the pre-flight found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// What will happen, one line each.
    pub lines: Vec<String>,
    /// Warnings the operator should read (a CPU fallback, …).
    pub warnings: Vec<String>,
}

/// The nearest existing folder at or above `path`.
fn existing_ancestor(path: &Path) -> Option<PathBuf> {
    let mut p = Some(path);
    while let Some(dir) = p {
        if dir.is_dir() {
            return Some(dir.to_path_buf());
        }
        p = dir.parent().filter(|d| !d.as_os_str().is_empty());
    }
    Some(PathBuf::from("."))
}

/// Whether a file can be created (and removed) in `dir`.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".boldstream-check-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Run the pre-flight on `config_path`.
pub fn check(config_path: &Path) -> anyhow::Result<CheckReport> {
    let (config, _) = Config::load(config_path)?;
    let mut lines = Vec::new();
    let mut warnings = Vec::new();
    lines.push(format!("config {}: valid", config_path.display()));

    // Folders and permissions before anything slower.
    let watch = &config.ingest.watch_dir;
    std::fs::read_dir(watch).with_context(|| {
        format!(
            "watch folder {} cannot be read (the daemon must list it)",
            watch.display()
        )
    })?;
    lines.push(format!(
        "watch {} ({:?} mode, {} names{}); readable",
        watch.display(),
        config.ingest.mode,
        config.ingest.naming,
        config
            .ingest
            .volumes_per_run
            .map_or_else(String::new, |v| format!(", {v} volumes per run"))
    ));
    let session = config.session_dir();
    let base = existing_ancestor(&session).unwrap_or_else(|| PathBuf::from("."));
    probe_write(&base).with_context(|| {
        format!(
            "session folder {}: cannot write in {} (the session store needs it)",
            session.display(),
            base.display()
        )
    })?;
    if session.join("session.toml").exists() {
        lines.push(resume_line(&config, config_path, &session)?);
    } else {
        lines.push(format!(
            "session folder {} (created at start; {} is writable)",
            session.display(),
            base.display()
        ));
    }

    serve_lines(&config, &session, &mut lines, &mut warnings)?;

    // Files, events, the subject against the mask: the daemon's own checks.
    Pipeline::preflight(&config)?;
    let realign = &config.realign;
    lines.push(match &realign.reference {
        Some(r) => format!("reference {}", r.display()),
        None => "reference: the first volume of the session".into(),
    });
    let subject = match (&config.decode.model, &config.decode.subject) {
        (Some(_), Some(s)) => Some(crate::decode::manifest::SubjectManifest::load(s)?),
        _ => None,
    };
    let mask = realign
        .mask
        .clone()
        .or_else(|| subject.as_ref().and_then(|s| s.mask.clone()));
    lines.push(match &mask {
        Some(m) => format!("mask {}", m.display()),
        None => "mask: nilearn-style EPI mask of the reference".into(),
    });
    let grid = realign
        .target_grid
        .clone()
        .or_else(|| subject.as_ref().and_then(|s| s.reference.clone()));
    lines.push(match &grid {
        Some(g) if realign.target_grid.is_none() => format!(
            "output grid: the subject's calibration reference {}, registered to the session reference at start",
            g.display()
        ),
        Some(g) => format!("output grid {}", g.display()),
        None => "output grid: the session reference".into(),
    });
    let glm = &config.glm;
    if glm.wanted() {
        let zscore = match (&glm.zscore_stats, glm.session_zscore, &subject) {
            (Some(z), _, _) => format!("calibration statistics {}", z.display()),
            (None, false, Some(s)) if s.zscore.is_some() => format!(
                "the subject's calibration statistics {}",
                s.zscore.as_deref().unwrap_or(Path::new("")).display()
            ),
            _ => "the session's betas so far".into(),
        };
        lines.push(format!(
            "GLM: TR {} s, {:?}, betas {} s after onset, {} events table(s), {} warm-up run(s), z-scored against {}",
            glm.tr.map_or_else(|| "?".into(), |t| t.to_string()),
            glm.noise_model,
            glm.delay,
            glm.events.len(),
            glm.warmup_runs,
            zscore
        ));
    } else {
        lines.push("GLM: off (no events, ROIs or live trial listener)".into());
    }

    // Decoding: load, check and warm every graph, as the start would.
    match crate::decode::stage::load_and_warm(&config.decode)? {
        None => lines.push("decoding: off (no [decode] model)".into()),
        Some(w) => {
            let r = &w.report;
            lines.push(format!(
                "decoding: {} for subject {} ({} voxels), ONNX Runtime {} ({}), policy {:?}",
                r.model.display(),
                r.subject,
                w.fast.subject().voxels,
                r.version,
                r.library.display(),
                config.decode.policy
            ));
            for g in &r.graphs {
                lines.push(format!(
                    "  {:<15} {:<4} warm-up {:.2} ms, then {:.3} ms",
                    g.role,
                    g.provider,
                    g.first_seconds * 1e3,
                    g.median_seconds * 1e3
                ));
            }
            warnings.extend(w.notices);
        }
    }
    Ok(CheckReport { lines, warnings })
}

/// What `run` will do with a folder that already holds a session: the
/// policy and the settings comparison of a resume, without reading (or
/// repairing) the store itself — the check writes nothing.
fn resume_line(config: &Config, config_path: &Path, session: &Path) -> anyhow::Result<String> {
    if config.session.resume == crate::config::ResumePolicy::Never {
        anyhow::bail!(
            "session folder {} already holds a session and [session] resume = \"never\": run would refuse to start",
            session.display()
        );
    }
    let stored_path = session.join("session.toml");
    let stored = std::fs::read_to_string(&stored_path)
        .with_context(|| format!("reading {}", stored_path.display()))?;
    let stored = match stored.split_once('\n') {
        Some((first, rest)) if first.starts_with(crate::session::store::SESSION_TOML_FIRST) => rest,
        _ => stored.as_str(),
    };
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let diff = crate::session::resume::config_differences(stored, &text)
        .map_err(|e| anyhow::anyhow!("{}: does not parse: {e}", stored_path.display()))?;
    if !diff.is_empty() {
        anyhow::bail!(
            "session folder {} holds a session started with other settings; run would refuse to resume it:\n  {}",
            session.display(),
            diff.join("\n  ")
        );
    }
    Ok(format!(
        "session folder {} holds a session with these settings: run will resume it (crash-safe resume)",
        session.display()
    ))
}

/// The dashboard, feedback sockets and result files: addresses that parse
/// (and bind now — a warning only, as the daemon itself may hold them while
/// the check runs), UDP targets that resolve, folders that exist.
fn serve_lines(
    config: &Config,
    session: &Path,
    lines: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let serve = &config.serve;
    for (what, addr, path) in [
        ("dashboard", &serve.http, "/ (SSE /events, /metrics)"),
        ("feedback protocol", &serve.feedback, "TCP"),
    ] {
        let Some(addr) = addr else {
            lines.push(format!("{what}: off"));
            continue;
        };
        let resolved: Vec<_> = addr
            .to_socket_addrs()
            .with_context(|| format!("[serve] {what} address '{addr}' is not HOST:PORT"))?
            .collect();
        if let Err(e) = std::net::TcpListener::bind(&resolved[..]) {
            warnings.push(format!(
                "{what} on {addr}: cannot bind now ({e}); in use by a running daemon?"
            ));
        }
        let exposed = resolved.iter().any(|a| !a.ip().is_loopback());
        lines.push(format!(
            "{what} on {addr} {path}{}",
            if exposed {
                " — reachable from the network, without authentication"
            } else {
                " (this machine only)"
            }
        ));
    }
    for t in &serve.udp_targets {
        t.to_socket_addrs()
            .with_context(|| format!("[serve] udp_targets: '{t}' is not HOST:PORT"))?;
    }
    if !serve.udp_targets.is_empty() {
        lines.push(format!("UDP feed to {}", serve.udp_targets.join(", ")));
    }
    if serve.results {
        let dir = serve
            .results_dir
            .clone()
            .unwrap_or_else(|| session.join("results"));
        let base = existing_ancestor(&dir).unwrap_or_else(|| PathBuf::from("."));
        probe_write(&base).with_context(|| {
            format!(
                "results folder {}: cannot write in {}",
                dir.display(),
                base.display()
            )
        })?;
        lines.push(format!("per-trial result files in {}", dir.display()));
    }
    if let Some(st) = &serve.stimuli
        && !st.is_dir()
    {
        anyhow::bail!("[serve] stimuli {}: not an existing folder", st.display());
    }
    Ok(())
}

/// `boldstream check`: print the report, or fail with the first problem.
pub fn run_cli(config_path: &Path) -> anyhow::Result<()> {
    let r = check(config_path)?;
    for l in &r.lines {
        println!("{l}");
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    println!(
        "ready to run: boldstream run --config {}",
        config_path.display()
    );
    Ok(())
}
