//! The report page as one HTML string.
//!
//! In: the [`ReportData`], the metrics computed from it and a map from each
//! referenced image to its relative path inside the report folder. Out: a
//! static HTML5 page with inline CSS and inline SVG (no scripts, nothing
//! fetched from elsewhere). All text from the data is escaped.

use std::fmt::Write as _;
use std::path::Path;

use super::metrics::percentiles;
use super::{Metrics, ReportData, TrialRow, plot};

/// Escape text for HTML/SVG text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const DASH: &str = "–";

/// A fraction as a percentage with one decimal.
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} %", 100.0 * x)
    } else {
        DASH.into()
    }
}

/// A correlation or SSIM with three decimals.
pub fn score(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        DASH.into()
    }
}

/// Milliseconds with one decimal.
pub fn ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        DASH.into()
    }
}

fn triple((a, b, c): (f64, f64, f64)) -> String {
    format!("{} / {} / {}", ms(a), ms(b), ms(c))
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin-bottom: 0.2em; }
.subject { color: #555; margin-top: 0; }
.notes { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; color: #444; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
th { background: #f2f2f2; }
td.l, th.l { text-align: left; }
tr.session td { font-weight: bold; background: #fafafa; }
.chance { color: #777; font-size: 0.85em; }
table.trials td { text-align: center; }
figure { display: inline-block; margin: 0 0.2em; text-align: center; }
figure img { width: 112px; height: 112px; object-fit: contain; image-rendering: auto; border: 3px solid transparent; }
figure.hit img { border-color: #1a9e3a; }
figure.hit figcaption { color: #1a7e2a; font-weight: bold; }
figcaption { font-size: 0.75em; max-width: 118px; overflow-wrap: anywhere; }
.skip { color: #a33; font-size: 0.85em; max-width: 14em; display: inline-block; }
.missing { color: #999; }
";

/// The page. `image` maps a referenced image's source path to its path
/// relative to the page (`None`: not copied, shown as missing).
pub fn page(
    data: &ReportData,
    per_run: &[(u32, Metrics)],
    session: &Metrics,
    image: &dyn Fn(&Path) -> Option<String>,
) -> String {
    let mut s = String::new();
    let title = escape(&data.title);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n\
         <p class=\"subject\">Subject: {}</p>\n",
        escape(&data.subject)
    );
    if !data.notes.is_empty() {
        s.push_str("<div class=\"notes\">");
        for n in &data.notes {
            let _ = writeln!(s, "{}", escape(n));
        }
        s.push_str("</div>\n");
    }

    s.push_str("<h2>Metrics</h2>\n");
    metrics_table(&mut s, per_run, session);

    if !data.learning_curve.is_empty() {
        s.push_str(
            "<h2>Learning curve</h2>\n<table class=\"curve\">\n<tr><th class=\"l\">calibration</th>\
             <th>calibration trials</th><th>top-1 <span class=\"chance\">(chance)</span></th>\
             <th>two-way PixCorr</th><th>two-way SSIM</th><th>mean PixCorr</th><th>mean SSIM</th></tr>\n",
        );
        for (label, n, m) in &data.learning_curve {
            let _ = writeln!(
                s,
                "<tr><td class=\"l\">{}</td><td>{n}</td><td>{} <span class=\"chance\">({})</span></td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(label),
                pct(m.top1),
                pct(m.chance),
                pct(m.two_way_pixcorr),
                pct(m.two_way_ssim),
                score(m.mean_pixcorr),
                score(m.mean_ssim)
            );
        }
        s.push_str("</table>\n");
    }

    s.push_str("<h2>Motion</h2>\n");
    if data.motion.is_empty() {
        s.push_str("<p class=\"missing\">No motion parameters.</p>\n");
    } else {
        s.push_str("<div class=\"plot\">");
        s.push_str(&plot::motion_svg(&data.motion, data.fd_threshold));
        s.push_str("</div>\n");
    }

    s.push_str("<h2>Stage latency (ms)</h2>\n");
    if data.stages.is_empty() {
        s.push_str("<p class=\"missing\">No stage timings.</p>\n");
    } else {
        s.push_str(
            "<table class=\"stages\">\n<tr><th class=\"l\">stage</th><th>n</th><th>p50</th>\
             <th>p95</th><th>max</th></tr>\n",
        );
        for st in &data.stages {
            let (p50, p95, max) = percentiles(&st.samples_ms);
            let n = st.samples_ms.iter().filter(|v| v.is_finite()).count();
            let _ = writeln!(
                s,
                "<tr><td class=\"l\">{}</td><td>{n}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&st.stage),
                ms(p50),
                ms(p95),
                ms(max)
            );
        }
        s.push_str("</table>\n");
    }

    let _ = writeln!(s, "<h2>Trials ({})</h2>", data.trials.len());
    s.push_str(
        "<table class=\"trials\">\n<tr><th>run</th><th>trial</th><th>stimulus</th>\
         <th>reconstruction</th><th>top-5 retrieved</th><th>rank</th>\
         <th>ms to retrieval</th><th>ms to reconstruction</th></tr>\n",
    );
    for t in &data.trials {
        trial_row(&mut s, t, image);
    }
    s.push_str("</table>\n</body>\n</html>\n");
    s
}

fn metrics_table(s: &mut String, per_run: &[(u32, Metrics)], session: &Metrics) {
    s.push_str(
        "<table class=\"metrics\">\n<tr><th class=\"l\"></th><th>trials</th>\
         <th>top-1 retrieval <span class=\"chance\">(chance)</span></th><th>candidates</th>\
         <th>reconstructed</th><th>two-way PixCorr</th><th>two-way SSIM</th>\
         <th>mean PixCorr</th><th>mean SSIM</th>\
         <th>to retrieval, ms<br>p50 / p95 / max</th>\
         <th>to reconstruction, ms<br>p50 / p95 / max</th></tr>\n",
    );
    let rows = per_run
        .iter()
        .map(|(run, m)| (format!("run {run}"), m, ""))
        .chain([("session".to_string(), session, " class=\"session\"")]);
    for (label, m, class) in rows {
        let _ = writeln!(
            s,
            "<tr{class}><td class=\"l\">{}</td><td>{}</td>\
             <td>{} <span class=\"chance\">({})</span></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&label),
            m.trials,
            pct(m.top1),
            pct(m.chance),
            m.candidates,
            m.reconstructed,
            pct(m.two_way_pixcorr),
            pct(m.two_way_ssim),
            score(m.mean_pixcorr),
            score(m.mean_ssim),
            triple(m.retrieval_ms),
            triple(m.reconstruction_ms)
        );
    }
    s.push_str("</table>\n");
}

fn figure(
    s: &mut String,
    src: Option<&Path>,
    caption: &str,
    hit: bool,
    image: &dyn Fn(&Path) -> Option<String>,
) {
    let class = if hit { " class=\"hit\"" } else { "" };
    let _ = write!(s, "<figure{class}>");
    match src.and_then(image) {
        Some(rel) => {
            let _ = write!(
                s,
                "<img src=\"{}\" alt=\"{}\">",
                escape(&rel),
                escape(caption)
            );
        }
        None => s.push_str("<span class=\"missing\">no image</span>"),
    }
    let _ = write!(s, "<figcaption>{}</figcaption></figure>", escape(caption));
}

fn trial_row(s: &mut String, t: &TrialRow, image: &dyn Fn(&Path) -> Option<String>) {
    let _ = write!(s, "<tr><td>{}</td><td>{}</td><td>", t.run, t.trial);
    let stim_caption = t.stim_id.clone().unwrap_or_else(|| "stimulus".into());
    if t.stimulus_png.is_some() || t.stim_id.is_some() {
        figure(s, t.stimulus_png.as_deref(), &stim_caption, false, image);
    } else {
        s.push_str("<span class=\"missing\">unknown</span>");
    }
    s.push_str("</td><td>");
    match &t.reconstruction_png {
        Some(p) => figure(s, Some(p), "reconstruction", false, image),
        None => {
            let why = t.skipped.as_deref().unwrap_or("not reconstructed");
            let _ = write!(s, "<span class=\"skip\">{}</span>", escape(why));
        }
    }
    s.push_str("</td><td class=\"top\">");
    if t.top.is_empty() {
        s.push_str("<span class=\"missing\">not decoded</span>");
    }
    for (k, (id, cos)) in t.top.iter().enumerate() {
        let hit = t.stim_id.as_deref() == Some(id.as_str());
        let src = t.top_png.get(k).and_then(|p| p.as_deref());
        figure(s, src, &format!("{id} · {cos:.3}"), hit, image);
    }
    let rank = t.rank.map_or(DASH.to_string(), |r| r.to_string());
    let _ = writeln!(
        s,
        "</td><td>{rank}</td><td>{}</td><td>{}</td></tr>",
        ms(t.since_trigger_retrieval_ms.unwrap_or(f64::NAN)),
        ms(t.since_trigger_reconstruction_ms.unwrap_or(f64::NAN))
    );
    // A reconstructed trial that was also flagged (e.g. late) keeps its note.
    if t.reconstruction_png.is_some()
        && let Some(why) = &t.skipped
    {
        let _ = writeln!(
            s,
            "<tr><td colspan=\"8\" class=\"l\"><span class=\"skip\">{}</span></td></tr>",
            escape(why)
        );
    }
}
