//! `boldstream models check`: validate a model (and subject) folder and
//! time each graph.
//!
//! In: the folders and runtime settings. Out: a printed report (library,
//! provider, per-graph first-call and median latency, one fast path and
//! one reconstruction timed end to end), or the first mismatch as an error.

use std::io::Write;

use super::error::ModelError;
use super::stage::{DecodeConfig, Warmed, load_and_warm};

/// Run the check, printing to `out`.
pub fn run(config: &DecodeConfig, out: &mut dyn Write) -> Result<(), ModelError> {
    let Some(Warmed {
        mut fast,
        mut recon,
        report,
        notices,
    }) = load_and_warm(config)?
    else {
        return Err(ModelError::Manifest {
            path: config.model.clone().unwrap_or_default(),
            message: "a model folder and a subject folder are needed".into(),
        });
    };
    let w = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
    };
    for n in notices {
        w(out, format!("notice: {n}"));
    }
    w(out, format!("model     {}", report.model.display()));
    w(
        out,
        format!(
            "subject   {} ({} voxels)",
            report.subject,
            fast.subject().voxels
        ),
    );
    w(
        out,
        format!(
            "runtime   ONNX Runtime {} from {}",
            report.version,
            report.library.display()
        ),
    );
    w(
        out,
        "graph            provider  first call   median   file".to_string(),
    );
    for g in &report.graphs {
        w(
            out,
            format!(
                "{:<16} {:<9} {:>8.2} ms {:>8.3} ms  {}",
                g.role,
                g.provider,
                g.first_seconds * 1e3,
                g.median_seconds * 1e3,
                g.file.display()
            ),
        );
    }
    let zeros = vec![0f32; fast.subject().voxels];
    let f = fast.run(&zeros)?;
    let graph_s: f64 = f.graphs.iter().map(|g| g.seconds).sum();
    w(
        out,
        format!(
            "fast path   {:.3} ms (graphs {:.3} ms, ours {:.3} ms){}",
            f.wall_seconds * 1e3,
            graph_s * 1e3,
            (f.wall_seconds - graph_s) * 1e3,
            fast.bank()
                .map(|b| format!(", bank of {} candidates", b.len()))
                .unwrap_or_default()
        ),
    );
    if let Some(r) = recon.as_mut() {
        let rec = r.run_blended(&f.tokens, f.lowlevel.as_deref())?;
        w(
            out,
            format!(
                "reconstruction {:.1} ms: prior {} steps {:.1} ms, decoder {} steps {:.1} ms, latent decoder {:.2} ms, ours {:.3} ms; seeds {}/{}",
                rec.wall_seconds * 1e3,
                rec.prior_steps.len(),
                rec.prior_steps.iter().sum::<f64>() * 1e3,
                rec.decoder_steps.len(),
                rec.decoder_steps.iter().sum::<f64>() * 1e3,
                rec.latent_decoder_seconds * 1e3,
                (rec.wall_seconds - rec.graph_seconds()) * 1e3,
                rec.prior_seed,
                rec.decoder_seed
            ),
        );
    } else {
        w(
            out,
            "reconstruction: none (the model has no decoder)".to_string(),
        );
    }
    w(out, "ok".to_string());
    Ok(())
}
