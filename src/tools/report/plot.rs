//! Inline SVG line plots for the report page.
//!
//! In: series of (x, y) points (a non-finite y is a gap) or the session's
//! motion rows (run, volume, six MCFLIRT parameters, FD). Out: a standalone
//! `<svg>` element as a string, with no scripts and no external resources,
//! to paste into the HTML page.

use std::fmt::Write as _;

use super::html::escape;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 210.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 96.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 36.0;

/// Distinguishable on white and for the common colour-vision deficiencies
/// (Okabe–Ito).
const PALETTE: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];

/// One line on a panel.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Legend label.
    pub name: String,
    /// CSS colour.
    pub colour: String,
    /// Points in drawing order; a non-finite x or y breaks the line.
    pub points: Vec<(f64, f64)>,
}

/// One plot area: title, y-axis label, lines, horizontal reference lines
/// (value, label, drawn dashed) and vertical markers (x, label).
#[derive(Debug, Clone, Default)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub x_label: String,
    pub traces: Vec<Trace>,
    pub hlines: Vec<(f64, String)>,
    pub vlines: Vec<(f64, String)>,
    /// x extent shown; `None` fits the points.
    pub x_range: Option<(f64, f64)>,
}

/// A single-panel SVG line plot.
pub fn line_svg(panel: &Panel) -> String {
    stack(std::slice::from_ref(panel))
}

/// Panels one above the other in one `<svg>`.
fn stack(panels: &[Panel]) -> String {
    let height = PANEL_HEIGHT * panels.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    for (k, p) in panels.iter().enumerate() {
        draw_panel(&mut s, p, k as f64 * PANEL_HEIGHT);
    }
    s.push_str("</svg>");
    s
}

/// A step of 1, 2 or 5 × 10^k giving about `n` intervals over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let s = format!("{v:.decimals$}");
    // "-0" and "-0.0" read as a different value from 0.
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

fn draw_panel(s: &mut String, p: &Panel, y0: f64) {
    let (pl, pr) = (LEFT, WIDTH - RIGHT);
    let (pt, pb) = (y0 + TOP, y0 + PANEL_HEIGHT - BOTTOM);
    let points = || p.traces.iter().flat_map(|t| t.points.iter());
    let (mut x_lo, mut x_hi) = p
        .x_range
        .or_else(|| extent(points().filter(|(_, y)| y.is_finite()).map(|&(x, _)| x)))
        .unwrap_or((0.0, 1.0));
    if x_hi <= x_lo {
        x_lo -= 0.5;
        x_hi += 0.5;
    }
    // Zero is always in view so that drift reads against it.
    let (mut y_lo, mut y_hi) = extent(
        points()
            .filter(|(x, _)| x.is_finite())
            .map(|&(_, y)| y)
            .chain(p.hlines.iter().map(|h| h.0))
            .chain([0.0]),
    )
    .unwrap_or((0.0, 1.0));
    if y_hi - y_lo < 1e-9 {
        y_hi += 1.0;
    }
    let pad = 0.06 * (y_hi - y_lo);
    y_lo -= pad;
    y_hi += pad;
    let sx = |x: f64| pl + (x - x_lo) / (x_hi - x_lo) * (pr - pl);
    let sy = |y: f64| pb - (y - y_lo) / (y_hi - y_lo) * (pb - pt);

    let _ = write!(
        s,
        "<text x=\"{pl}\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        y0 + TOP - 10.0,
        escape(&p.title)
    );
    let _ = write!(
        s,
        "<rect x=\"{pl}\" y=\"{pt:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#888\"/>",
        pr - pl,
        pb - pt
    );
    let step = nice_step(y_hi - y_lo, 4.0);
    let mut v = (y_lo / step).ceil() * step;
    while v <= y_hi {
        let y = sy(v);
        let _ = write!(
            s,
            "<line x1=\"{pl}\" y1=\"{y:.1}\" x2=\"{pr}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            pl - 4.0,
            y + 4.0,
            fmt_tick(v, step)
        );
        v += step;
    }
    let xstep = nice_step(x_hi - x_lo, 8.0).max(1.0);
    let mut v = (x_lo / xstep).ceil() * xstep;
    while v <= x_hi {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            sx(v),
            pb + 13.0,
            fmt_tick(v, xstep)
        );
        v += xstep;
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate({:.1} {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (pl + pr) / 2.0,
        pb + 28.0,
        escape(&p.x_label),
        pl - 44.0,
        (pt + pb) / 2.0,
        escape(&p.y_label)
    );
    for (x, label) in &p.vlines {
        if !(x_lo..=x_hi).contains(x) {
            continue;
        }
        let x = sx(*x);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{pt:.1}\" x2=\"{x:.1}\" y2=\"{pb:.1}\" stroke=\"#999\" stroke-width=\"1\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#666\">{}</text>",
            x + 3.0,
            pt + 11.0,
            escape(label)
        );
    }
    for (v, label) in &p.hlines {
        let y = sy(*v);
        let _ = write!(
            s,
            "<line x1=\"{pl}\" y1=\"{y:.1}\" x2=\"{pr}\" y2=\"{y:.1}\" stroke=\"#C00\" \
             stroke-dasharray=\"6 4\" class=\"threshold\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#C00\">{}</text>",
            pr + 4.0,
            y + 4.0,
            escape(label)
        );
    }
    for (k, t) in p.traces.iter().enumerate() {
        let d = path_data(&t.points, &sx, &sy);
        if !d.is_empty() {
            // Round caps make an isolated point (a zero-length subpath)
            // visible as a dot.
            let _ = write!(
                s,
                "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.4\" \
                 stroke-linecap=\"round\" stroke-linejoin=\"round\"><title>{}</title></path>",
                escape(&t.colour),
                escape(&t.name)
            );
        }
        let ly = pt + 8.0 + 15.0 * k as f64;
        let _ = write!(
            s,
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"legend\">{}</text>",
            pr + 8.0,
            pr + 26.0,
            escape(&t.colour),
            pr + 30.0,
            ly + 4.0,
            escape(&t.name)
        );
    }
}

/// SVG path data; every run of finite points is its own subpath.
fn path_data(points: &[(f64, f64)], sx: &impl Fn(f64) -> f64, sy: &impl Fn(f64) -> f64) -> String {
    let mut d = String::new();
    let mut open = false;
    for &(x, y) in points {
        if !(x.is_finite() && y.is_finite()) {
            open = false;
            continue;
        }
        if open {
            let _ = write!(d, " L{:.1} {:.1}", sx(x), sy(y));
        } else {
            if !d.is_empty() {
                d.push(' ');
            }
            let _ = write!(d, "M{:.1} {:.1} l0 0", sx(x), sy(y));
            open = true;
        }
    }
    d
}

/// One motion row: run, volume index in the run, MCFLIRT parameters
/// (rx, ry, rz in radians, tx, ty, tz in mm) and framewise displacement.
pub type MotionRow = (u32, usize, [f64; 6], Option<f64>);

/// The motion figure: a panel of the six parameters (rotations in degrees,
/// translations in mm) and a panel of FD with `fd_threshold` dashed and the
/// number of volumes above it in the title. Runs are laid end to end, each
/// boundary marked; volumes missing from a run, NaN parameters and volumes
/// without FD are gaps in the lines.
pub fn motion_svg(rows: &[MotionRow], fd_threshold: f64) -> String {
    let mut rows: Vec<&MotionRow> = rows.iter().collect();
    rows.sort_by_key(|r| (r.0, r.1));
    // A volume reported twice is drawn once (the later report).
    rows.dedup_by(|later, earlier| {
        let same = (later.0, later.1) == (earlier.0, earlier.1);
        if same {
            *earlier = *later;
        }
        same
    });

    let names = [
        "rx (°)", "ry (°)", "rz (°)", "tx (mm)", "ty (mm)", "tz (mm)",
    ];
    let mut params: Vec<Vec<(f64, f64)>> = vec![Vec::new(); 6];
    let mut fd: Vec<(f64, f64)> = Vec::new();
    let mut vlines = Vec::new();
    // x of the current run's volume 0, and of the next run's.
    let (mut base, mut next_base) = (0usize, 0usize);
    let mut prev: Option<(u32, usize)> = None;
    let mut x_max = 0.0f64;
    let (mut above, mut with_fd) = (0usize, 0usize);
    for r in &rows {
        let (run, vol, p, f) = **r;
        match prev {
            Some((pr, _)) if pr != run => {
                for s in params.iter_mut().chain([&mut fd]) {
                    s.push((f64::NAN, f64::NAN));
                }
                base = next_base;
                vlines.push((base as f64 - 0.5, format!("run {run}")));
            }
            None => vlines.push((-0.5, format!("run {run}"))),
            Some((_, pv)) if vol != pv + 1 => {
                for s in params.iter_mut().chain([&mut fd]) {
                    s.push((f64::NAN, f64::NAN));
                }
            }
            _ => {}
        }
        next_base = next_base.max(base + vol + 1);
        let x = (base + vol) as f64;
        x_max = x_max.max(x);
        for (k, s) in params.iter_mut().enumerate() {
            let v = if k < 3 { p[k].to_degrees() } else { p[k] };
            s.push((x, v));
        }
        let fv = f.unwrap_or(f64::NAN);
        fd.push((x, fv));
        if fv.is_finite() {
            with_fd += 1;
            if fv > fd_threshold {
                above += 1;
            }
        }
        prev = Some((run, vol));
    }
    let x_range = Some((-0.5, x_max + 0.5));
    let x_label = "volume (runs end to end)".to_string();
    let motion = Panel {
        title: "Head motion: rotations (°) and translations (mm)".into(),
        y_label: "° / mm".into(),
        x_label: x_label.clone(),
        traces: params
            .into_iter()
            .zip(names)
            .enumerate()
            .map(|(k, (points, name))| Trace {
                name: name.into(),
                colour: PALETTE[k].into(),
                points,
            })
            .collect(),
        hlines: Vec::new(),
        vlines: vlines.clone(),
        x_range,
    };
    let fd_panel = Panel {
        title: format!(
            "Framewise displacement (mm): {above} of {with_fd} volumes above {fd_threshold} mm"
        ),
        y_label: "FD (mm)".into(),
        x_label,
        traces: vec![Trace {
            name: "FD".into(),
            colour: PALETTE[6].into(),
            points: fd,
        }],
        hlines: if fd_threshold.is_finite() {
            vec![(fd_threshold, format!("{fd_threshold} mm"))]
        } else {
            Vec::new()
        },
        vlines,
        x_range,
    };
    stack(&[motion, fd_panel])
}
