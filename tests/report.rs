//! The session report: metrics on constructed cases, SSIM and PixCorr
//! against scikit-image (fixtures from tests/parity/ssim_fixtures.py), the
//! motion plot, and `write_report` on a small synthetic session.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use boldstream::formats::png::{read_png, write_png};
use boldstream::tools::report::metrics::{
    percentiles, pixcorr, resize_bilinear, ssim, to_grey, top1_among, two_way,
};
use boldstream::tools::report::plot::motion_svg;
use boldstream::tools::report::{
    Metrics, ReportData, ReportError, StageLatency, TrialRow, compute_metrics, session_metrics,
    write_report,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ssim")
        .join(name)
}

fn noise(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random::<f32>()).collect()
}

/// A smooth image-like pattern with a per-image phase, in [0, 1].
fn pattern(seed: u64, (c, h, w): (usize, usize, usize)) -> Vec<f32> {
    let p = seed as f32 * 0.7;
    let mut v = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let a = (x as f32 * 0.21 + p + ch as f32).sin();
                let b = (y as f32 * 0.17 * (1.0 + seed as f32 * 0.1) - p).cos();
                v.push(0.5 + 0.25 * a + 0.25 * b);
            }
        }
    }
    v
}

#[test]
fn identical_images_score_one() {
    let chw = (3, 24, 19);
    let img = pattern(3, chw);
    assert!((pixcorr(&img, &img) - 1.0).abs() < 1e-12);
    let g = to_grey(&img, chw);
    assert_eq!(g.len(), 24 * 19);
    assert!((ssim(&g, &g, 24, 19) - 1.0).abs() < 1e-12);
    // A different image must score lower, or the checks above prove nothing.
    let other = to_grey(&pattern(9, chw), chw);
    assert!(ssim(&g, &other, 24, 19) < 0.9);
    assert!(pixcorr(&img, &pattern(9, chw)) < 0.9);
}

#[test]
fn pixcorr_is_scale_invariant_and_sign_aware() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a = noise(&mut rng, 500);
    let b: Vec<f32> = a.iter().map(|v| 0.5 * v + 0.2).collect();
    let inv: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
    assert!((pixcorr(&a, &b) - 1.0).abs() < 1e-6);
    assert!((pixcorr(&a, &inv) + 1.0).abs() < 1e-6);
    assert!(
        pixcorr(&a, &a[..499]).is_nan(),
        "length mismatch must not score"
    );
    assert!(
        pixcorr(&a, &vec![0.3; 500]).is_nan(),
        "constant image has no correlation"
    );
}

#[test]
fn grey_uses_skimage_weights() {
    // One pixel each of pure R, G, B and white.
    let img = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0];
    let g = to_grey(&img, (3, 2, 2));
    let want = [0.2125, 0.7154, 0.0721, 1.0];
    for (a, b) in g.iter().zip(want) {
        assert!((*a as f64 - b).abs() < 1e-6, "{g:?}");
    }
    assert_eq!(to_grey(&img[..4], (1, 2, 2)), img[..4].to_vec());
    assert!(to_grey(&img[..5], (3, 2, 2)).is_empty());
}

#[test]
fn ssim_refuses_images_smaller_than_its_window() {
    let g = vec![0.5f32; 10 * 30];
    assert!(ssim(&g, &g, 10, 30).is_nan());
    assert!(ssim(&g, &g[..299], 10, 30).is_nan());
}

fn read_tsv(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
fn ssim_and_pixcorr_match_scikit_image() {
    let rows = read_tsv(&fixture("expected.tsv"));
    assert_eq!(rows.len(), 7, "fixture pairs");
    let (mut worst_ssim, mut worst_pix) = (0.0f64, 0.0f64);
    for row in &rows {
        let (stim, recon) = if row[0] == "grey" {
            ("grey_stim.png".to_string(), "grey_recon.png".to_string())
        } else {
            (
                format!("stim_{}.png", row[0]),
                format!("recon_{}.png", row[0]),
            )
        };
        let (s, chw) = read_png(&fixture(&stim)).unwrap();
        let (r, chw_r) = read_png(&fixture(&recon)).unwrap();
        assert_eq!(chw, chw_r);
        let want_pix: f64 = row[1].parse().unwrap();
        let want_ssim: f64 = row[2].parse().unwrap();
        let pix = pixcorr(&s, &r);
        let ss = ssim(&to_grey(&r, chw), &to_grey(&s, chw), chw.1, chw.2);
        worst_pix = worst_pix.max((pix - want_pix).abs());
        worst_ssim = worst_ssim.max((ss - want_ssim).abs());
        assert!(
            (pix - want_pix).abs() < 1e-5 && (ss - want_ssim).abs() < 1e-5,
            "pair {}: pixcorr {pix} vs {want_pix}, ssim {ss} vs {want_ssim}",
            row[0]
        );
    }
    eprintln!("max |error| vs scikit-image: SSIM {worst_ssim:.2e}, PixCorr {worst_pix:.2e}");
}

#[test]
fn two_way_of_fixture_pairs_matches_numpy() {
    let want: Vec<f64> = read_tsv(&fixture("two_way.tsv"))[0]
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let trials: Vec<TrialRow> = (0..6)
        .map(|k| TrialRow {
            run: 1,
            trial: k,
            stim_id: Some(format!("img{k}")),
            stimulus_png: Some(fixture(&format!("stim_{k}.png"))),
            reconstruction_png: Some(fixture(&format!("recon_{k}.png"))),
            ..Default::default()
        })
        .collect();
    let refs: Vec<&TrialRow> = trials.iter().collect();
    let m = compute_metrics(&refs, &HashMap::new()).unwrap();
    assert_eq!(m.reconstructed, 6);
    let got = [
        m.two_way_pixcorr,
        m.two_way_ssim,
        m.mean_pixcorr,
        m.mean_ssim,
    ];
    for (name, (g, w)) in [
        "two-way PixCorr",
        "two-way SSIM",
        "mean PixCorr",
        "mean SSIM",
    ]
    .iter()
    .zip(got.iter().zip(&want))
    {
        assert!((g - w).abs() < 1e-5, "{name}: {g} vs {w}");
    }
    // No query embeddings: nothing scored for retrieval.
    assert_eq!(m.retrieved, 0);
    assert!(m.top1.is_nan());
}

#[test]
fn two_way_is_one_for_perfect_and_near_half_for_noise() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let n = 40;
    let chw = (3, 16, 16);
    let stims: Vec<Vec<f32>> = (0..n).map(|_| noise(&mut rng, 3 * 256)).collect();
    let perfect: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| pixcorr(&stims[i], &stims[j])).collect())
        .collect();
    assert_eq!(two_way(&perfect, |i, j| i == j), 1.0);
    let recons: Vec<Vec<f32>> = (0..n).map(|_| noise(&mut rng, 3 * 256)).collect();
    let grey_s: Vec<Vec<f32>> = stims.iter().map(|s| to_grey(s, chw)).collect();
    let grey_r: Vec<Vec<f32>> = recons.iter().map(|r| to_grey(r, chw)).collect();
    let unrelated_pix: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| pixcorr(&recons[i], &stims[j])).collect())
        .collect();
    let unrelated_ssim: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| ssim(&grey_r[i], &grey_s[j], 16, 16))
                .collect()
        })
        .collect();
    for (name, m) in [("pixcorr", &unrelated_pix), ("ssim", &unrelated_ssim)] {
        let v = two_way(m, |i, j| i == j);
        // 40 trials × 39 comparisons: the mean of 40 near-uniform ranks has
        // a standard deviation of about 0.046.
        assert!((v - 0.5).abs() < 0.15, "{name}: two-way {v} for noise");
    }
    // Trials showing the same image are not compared with each other: if
    // every trial shows the same image there is nothing to score.
    assert!(two_way(&perfect, |_, _| true).is_nan());
}

#[test]
fn top1_among_hand_made_embeddings() {
    let candidates = vec![
        vec![1.0, 0.0, 0.0],
        vec![0.0, 1.0, 0.0],
        vec![0.0, 0.0, 1.0],
    ];
    let queries = vec![
        vec![0.9, 0.1, 0.0],      // -> 0, truth 0: correct
        vec![0.1, 0.2, 5.0],      // -> 2, truth 2: correct (scale does not matter)
        vec![0.6, 0.5, 0.0],      // -> 0, truth 1: wrong
        vec![f32::NAN, 1.0, 0.0], // NaN query: wrong
        vec![0.0, 1.0],           // wrong length: wrong
    ];
    let truth = vec![0, 2, 1, 1, 1];
    assert_eq!(top1_among(&queries, &truth, &candidates), (2, 5));
    // Cosine, not dot product: a long vector does not win.
    let c2 = vec![vec![10.0, 10.0], vec![1.0, 0.0]];
    assert_eq!(top1_among(&[vec![1.0, 0.1]], &[1], &c2), (1, 1));
}

#[test]
fn percentiles_nearest_rank() {
    let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
    // index round(99 q) of 1..=100
    assert_eq!(percentiles(&v), (51.0, 95.0, 100.0));
    let (a, b, c) = percentiles(&[f64::NAN, 3.0]);
    assert_eq!((a, b, c), (3.0, 3.0, 3.0));
    assert!(percentiles(&[]).0.is_nan());
}

#[test]
fn resize_keeps_constant_and_endpoints() {
    let img: Vec<f32> = (0..4).map(|x| x as f32).collect(); // 1 × 1 × 4 ramp
    let up = resize_bilinear(&img, (1, 1, 4), 1, 8);
    assert_eq!(up.len(), 8);
    assert_eq!(up[0], 0.0);
    assert_eq!(up[7], 3.0);
    assert!(up.windows(2).all(|w| w[1] >= w[0]), "{up:?}");
    let same = resize_bilinear(&[0.25; 3 * 6 * 5], (3, 6, 5), 4, 9);
    assert!(same.iter().all(|&v| (v - 0.25).abs() < 1e-7));
}

#[test]
fn motion_plot_has_traces_threshold_and_gaps() {
    let mut rows = Vec::new();
    for run in 1..=2u32 {
        for vol in 0..20usize {
            if run == 2 && (7..10).contains(&vol) {
                continue; // missing volumes
            }
            let t = vol as f64 * 0.05;
            let fd = if vol == 0 {
                None
            } else {
                Some(if vol % 6 == 0 { 0.9 } else { 0.1 })
            };
            rows.push((run, vol, [0.001 * t, 0.0, -0.002, t, -t, 0.2], fd));
        }
    }
    // A NaN parameter is a gap, not a line to infinity.
    rows[4].2[3] = f64::NAN;
    let above = rows.iter().filter(|r| r.3.is_some_and(|f| f > 0.5)).count();
    let with_fd = rows.iter().filter(|r| r.3.is_some()).count();
    let svg = motion_svg(&rows, 0.5);
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    for name in [
        "rx (°)", "ry (°)", "rz (°)", "tx (mm)", "ty (mm)", "tz (mm)",
    ] {
        assert!(svg.contains(name), "legend lacks {name}");
    }
    assert!(
        svg.contains(&format!("{above} of {with_fd} volumes above 0.5 mm")),
        "{svg}"
    );
    assert!(svg.contains("stroke-dasharray"), "threshold not dashed");
    assert!(svg.contains("run 1") && svg.contains("run 2"));
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    // tx: breaks at the NaN, the run boundary and the missing volumes.
    let tx = svg
        .split("<path ")
        .find(|p| p.contains("<title>tx (mm)</title>"))
        .unwrap();
    assert_eq!(tx.matches('M').count(), 4, "{tx}");
    let ry = svg
        .split("<path ")
        .find(|p| p.contains("<title>ry (°)</title>"))
        .unwrap();
    assert_eq!(ry.matches('M').count(), 3);
}

struct Session {
    _dir: tempfile::TempDir,
    src: PathBuf,
    data: ReportData,
}

/// Two runs, four bank images shown, retrieval queries that are the bank
/// embedding plus noise (one trial deliberately wrong), reconstructions that
/// are the stimulus plus noise, and a trial that was not reconstructed.
fn session() -> Session {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let chw = (3, 32, 32);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let ids = ["cat <1>", "dog&2", "tree_3", "boat 4"];
    let mut bank = HashMap::new();
    for (k, id) in ids.iter().enumerate() {
        let file = format!("bank{k}.png");
        write_png(&src.join(&file), &pattern(k as u64 + 1, chw), chw).unwrap();
        let mut e = vec![0.0f32; 8];
        e[k] = 1.0;
        e[7] = 0.3;
        bank.insert(id.to_string(), e);
    }
    let mut trials = Vec::new();
    for (n, (run, k)) in [
        (1u32, 0usize),
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 0),
        (2, 3),
        (2, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let mut q = bank[ids[k]].clone();
        for v in q.iter_mut() {
            *v += 0.1 * rng.random::<f32>();
        }
        if n == 2 {
            q = bank[ids[3]].clone(); // retrieves the wrong image
        }
        let recon = if n == 6 {
            None
        } else {
            let mut img = pattern(k as u64 + 1, chw);
            for v in img.iter_mut() {
                *v = (*v + 0.2 * (rng.random::<f32>() - 0.5)).clamp(0.0, 1.0);
            }
            let p = src.join(format!("recon_r{run}_t{n}.png"));
            write_png(&p, &img, chw).unwrap();
            Some(p)
        };
        let order: Vec<usize> = (0..4)
            .map(|j| (k + j + usize::from(n == 2) * 3) % 4)
            .collect();
        trials.push(TrialRow {
            run,
            trial: n,
            stim_id: Some(ids[k].to_string()),
            stimulus_png: Some(src.join(format!("bank{k}.png"))),
            top: order
                .iter()
                .enumerate()
                .map(|(r, &j)| (ids[j].to_string(), 0.9 - 0.1 * r as f32))
                .collect(),
            top_png: order
                .iter()
                .map(|&j| Some(src.join(format!("bank{j}.png"))))
                .collect(),
            rank: Some(if n == 2 { 2 } else { 1 }),
            skipped: recon.is_none().then(|| "deadline <missed>".to_string()),
            reconstruction_png: recon,
            query: q,
            since_trigger_retrieval_ms: Some(20.0 + n as f64),
            since_trigger_reconstruction_ms: (n != 6).then_some(900.0 + 10.0 * n as f64),
        });
    }
    let motion = (0..30)
        .map(|v| {
            (
                1 + (v / 15) as u32,
                v % 15,
                [0.0, 0.001, 0.0, 0.1, 0.0, 0.02 * v as f64],
                Some(0.1),
            )
        })
        .collect();
    let data = ReportData {
        title: "Session <demo> & test".into(),
        subject: "sub-01".into(),
        notes: vec!["device: cpu".into()],
        trials,
        bank_embedding: bank,
        motion,
        fd_threshold: 0.5,
        stages: vec![StageLatency {
            stage: "realign".into(),
            samples_ms: vec![12.0, 14.0, 13.0],
        }],
        learning_curve: Vec::new(),
    };
    Session {
        _dir: dir,
        src,
        data,
    }
}

#[test]
fn session_metrics_per_run_and_session() {
    let s = session();
    let (runs, all) = session_metrics(&s.data).unwrap();
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        (all.trials, all.retrieved, all.reconstructed, all.candidates),
        (8, 8, 7, 4)
    );
    assert!((all.chance - 0.25).abs() < 1e-12);
    assert!((all.top1 - 7.0 / 8.0).abs() < 1e-12, "top-1 {}", all.top1);
    assert!((runs[0].1.top1 - 0.75).abs() < 1e-12);
    assert!((runs[1].1.top1 - 1.0).abs() < 1e-12);
    // Per-run rows use the session's candidates.
    assert_eq!(runs[0].1.candidates, 4);
    // Reconstructions are their stimulus plus noise: identified every time.
    assert_eq!(all.two_way_pixcorr, 1.0);
    assert_eq!(all.two_way_ssim, 1.0);
    assert!(all.mean_pixcorr > 0.5 && all.mean_pixcorr < 1.0);
    assert!(all.mean_ssim > 0.1 && all.mean_ssim < 1.0);
    // Latency percentiles over the trials that have them.
    assert_eq!(all.retrieval_ms, (24.0, 27.0, 27.0));
    assert_eq!(runs[1].1.reconstruction_ms.2, 970.0);
    // Session = trial-weighted mean of the runs.
    let weighted = (runs[0].1.mean_ssim * runs[0].1.reconstructed as f64
        + runs[1].1.mean_ssim * runs[1].1.reconstructed as f64)
        / all.reconstructed as f64;
    assert!((weighted - all.mean_ssim).abs() < 1e-12);

    // Scored among its own trials, run 2 has the same candidates here.
    let run2: Vec<&TrialRow> = s.data.trials.iter().filter(|t| t.run == 2).collect();
    let m = compute_metrics(&run2, &s.data.bank_embedding).unwrap();
    assert_eq!((m.trials, m.candidates, m.top1), (4, 4, 1.0));
}

#[test]
fn missing_embedding_is_an_error_naming_the_image() {
    let mut s = session();
    s.data.bank_embedding.remove("tree_3");
    match session_metrics(&s.data) {
        Err(e @ ReportError::NoEmbedding { .. }) => assert!(e.to_string().contains("tree_3")),
        other => panic!("expected NoEmbedding, got {other:?}"),
    }
}

fn fmt_pct(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

#[test]
fn write_report_is_self_contained() {
    let s = session();
    let out = s.src.parent().unwrap().join("report");
    let index = write_report(&out, &s.data).unwrap();
    assert_eq!(index, out.join("index.html"));
    let html = std::fs::read_to_string(&index).unwrap();
    assert!(!html.contains("<script"));
    // Nothing fetched from elsewhere (the SVG namespace URI is not a fetch).
    assert!(!html.contains("src=\"http") && !html.contains("href="));
    assert!(!out.join("index.html.part").exists());

    // Every referenced image is under img/, exists and is the same picture.
    let srcs: Vec<&str> = html
        .split("src=\"")
        .skip(1)
        .map(|p| &p[..p.find('"').unwrap()])
        .collect();
    let distinct: std::collections::HashSet<&&str> = srcs.iter().collect();
    // 4 bank images + 7 reconstructions.
    assert_eq!(distinct.len(), 11, "{distinct:?}");
    for rel in &srcs {
        assert!(rel.starts_with("img/"), "{rel}");
        assert!(out.join(rel).is_file(), "{rel} missing");
    }
    for t in &s.data.trials {
        if let Some(p) = &t.reconstruction_png {
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(
                html.contains(&format!("src=\"img/{name}\"")),
                "{name} not on the page"
            );
            assert_eq!(
                read_png(&out.join("img").join(name)).unwrap(),
                read_png(p).unwrap()
            );
        }
    }
    // Every trial has a row; the one without a reconstruction gives why,
    // escaped.
    assert_eq!(html.matches("<tr><td>").count(), s.data.trials.len());
    assert!(html.contains("deadline &lt;missed&gt;"));
    assert!(html.contains("Session &lt;demo&gt; &amp; test"));
    assert!(html.contains("cat &lt;1&gt;") && !html.contains("cat <1>"));
    // The correct retrieval is highlighted: 7 of 8 trials have the truth in
    // their top 5 first, and all 8 have it somewhere in the top 5.
    assert_eq!(html.matches("<figure class=\"hit\">").count(), 8);
    assert!(html.contains("<svg"));

    // The figures computed are on the page and in metrics.tsv.
    let (runs, all) = session_metrics(&s.data).unwrap();
    for m in runs.iter().map(|r| &r.1).chain([&all]) {
        let cell = format!(
            "{} <span class=\"chance\">({})</span>",
            fmt_pct(m.top1),
            fmt_pct(m.chance)
        );
        assert!(html.contains(&cell), "{cell} not on the page");
        assert!(html.contains(&format!("{:.3}", m.mean_ssim)));
        assert!(html.contains(&format!("{:.3}", m.mean_pixcorr)));
        let (a, b, c) = m.reconstruction_ms;
        assert!(html.contains(&format!("{a:.1} / {b:.1} / {c:.1}")));
    }
    let tsv = std::fs::read_to_string(out.join("metrics.tsv")).unwrap();
    let mut lines = tsv.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.len() == header.len()));
    let session_row = rows.iter().find(|r| r[0] == "session").unwrap();
    let get = |r: &Vec<&str>, name: &str| r[col(name)].parse::<f64>().unwrap();
    assert_eq!(get(session_row, "top1"), all.top1);
    assert_eq!(get(session_row, "mean_ssim"), all.mean_ssim);
    assert_eq!(get(session_row, "two_way_pixcorr"), all.two_way_pixcorr);
    assert_eq!(
        get(session_row, "reconstruction_p95_ms"),
        all.reconstruction_ms.1
    );
    let run2 = rows.iter().find(|r| r[0] == "run" && r[1] == "2").unwrap();
    assert_eq!(get(run2, "top1"), runs[1].1.top1);

    // The folder can be moved: the page still finds its images.
    let moved = s.src.parent().unwrap().join("moved");
    std::fs::rename(&out, &moved).unwrap();
    for rel in &srcs {
        assert!(moved.join(rel).is_file());
    }
    // A report rewritten in place, from the images already in its img/,
    // keeps them intact (a plain copy onto itself would truncate them).
    let mut data = s.data.clone();
    let inside = |p: &PathBuf| moved.join("img").join(p.file_name().unwrap());
    for t in &mut data.trials {
        t.stimulus_png = t.stimulus_png.as_ref().map(inside);
        t.reconstruction_png = t.reconstruction_png.as_ref().map(inside);
        t.top_png = t.top_png.iter().map(|p| p.as_ref().map(inside)).collect();
    }
    let again = write_report(&moved, &data).unwrap();
    assert_eq!(std::fs::read_to_string(again).unwrap(), html);
    for t in &s.data.trials {
        let p = t.stimulus_png.as_ref().unwrap();
        assert_eq!(read_png(&inside(p)).unwrap(), read_png(p).unwrap());
    }
}

#[test]
fn learning_curve_is_shown() {
    let mut s = session();
    let m = Metrics {
        trials: 8,
        retrieved: 8,
        reconstructed: 7,
        candidates: 4,
        top1: 0.4375,
        chance: 0.25,
        two_way_pixcorr: 0.6,
        two_way_ssim: 0.55,
        mean_pixcorr: 0.123,
        mean_ssim: 0.456,
        retrieval_ms: (1.0, 2.0, 3.0),
        reconstruction_ms: (f64::NAN, f64::NAN, f64::NAN),
    };
    s.data.learning_curve = vec![("25 %".into(), 37, m)];
    let out = s.src.parent().unwrap().join("report");
    let html = std::fs::read_to_string(write_report(&out, &s.data).unwrap()).unwrap();
    assert!(html.contains("Learning curve"));
    assert!(html.contains("<td>37</td>") && html.contains("43.8 %") && html.contains("0.456"));
    let tsv = std::fs::read_to_string(out.join("metrics.tsv")).unwrap();
    assert!(
        tsv.lines()
            .any(|l| l.starts_with("learning_curve\t25 %\t37\t"))
    );
}

#[test]
fn missing_png_is_an_error_naming_it() {
    // A reconstruction (read for the metrics) and a top-5 image (only
    // copied) are both reported by name.
    let s = session();
    let gone = s.src.join("recon_r1_t1.png");
    std::fs::remove_file(&gone).unwrap();
    let out = s.src.parent().unwrap().join("report");
    let err = write_report(&out, &s.data).unwrap_err();
    assert!(err.to_string().contains("recon_r1_t1.png"), "{err}");
    assert!(!out.join("index.html").exists());

    let mut s = session();
    s.data.trials[3].top_png[3] = Some(s.src.join("nowhere.png"));
    let err = write_report(&out, &s.data).unwrap_err();
    match &err {
        ReportError::Image { path, .. } => assert!(path.ends_with("nowhere.png")),
        other => panic!("expected an image error, got {other}"),
    }
    assert!(err.to_string().contains("nowhere.png"));
}
