//! The dashboard in a real browser: `boldstream demo` (a simulated subject
//! calibrated, then a live session followed by the real pipeline with the
//! demo model, so trials and reconstructions appear) serves the page, and
//! `tests/browser/dashboard.mjs` drives Debian's headless Chromium through
//! playwright-core against it: live values arrive, plots gain points, a
//! trial row shows its reconstruction beside its stimulus, all without a
//! reload, and a screenshot is taken.
//!
//! Needs `/usr/bin/chromium` (or `BOLDSTREAM_CHROMIUM`), Node and
//! `tests/browser/node_modules`; `make browser-deps` (part of `make test`)
//! installs them. Missing, the test fails and says so: it never passes
//! without having looked at the page.
//!
//! The demo starts its live session only once the page is connected
//! (`--wait-for-dashboard`), so the page sees every volume arrive; every
//! wait is on a condition, with a timeout.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const GUARD: Duration = Duration::from_secs(240);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("BOLDSTREAM_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "{} not found: the dashboard test needs Chromium (`make browser-deps` installs Debian's \
         chromium package; or set BOLDSTREAM_CHROMIUM)",
        path.display()
    );
    path
}

fn browser_dir() -> PathBuf {
    let dir = root().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core/package.json")
            .is_file(),
        "{}/node_modules is missing: run `make browser-deps` (npm ci in tests/browser)",
        dir.display()
    );
    dir
}

/// Kills the child if the test ends early, so a failed check never leaves
/// a daemon behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Forward `reader`'s lines to the test's output and to `tx`.
fn forward(reader: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            println!("demo | {line}");
            if tx.send(line).is_err() {
                // The test stopped listening; keep draining so the demo
                // never blocks on a full pipe.
                continue;
            }
        }
    });
}

#[test]
fn the_dashboard_updates_live_in_headless_chromium() {
    let chromium = chromium();
    let browser = browser_dir();
    let tmp = tempfile::tempdir().unwrap();
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    let demo = Command::new(env!("CARGO_BIN_EXE_boldstream"))
        .current_dir(root())
        .args(["demo", "--out"])
        .arg(tmp.path())
        .arg("--model")
        .arg(root().join("onnx/demo"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--wait-for-dashboard",
            "--calibration-runs",
            "2",
            "--runs",
            "2",
            "--images-per-run",
            "12",
            "--blank-trials",
            "1",
            "--test-images",
            "10",
            "--speed",
            "10",
            "--no-learning-curve",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the boldstream binary starts");
    let mut demo = Reaped(demo);
    let (tx, lines) = mpsc::channel();
    forward(demo.0.stdout.take().unwrap(), tx.clone());
    forward(demo.0.stderr.take().unwrap(), tx);

    let url = loop {
        let line = lines
            .recv_timeout(GUARD)
            .expect("the demo printed its dashboard URL before ending");
        if let Some(url) = line.strip_prefix("dashboard live: ") {
            break url.trim().to_string();
        }
    };
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let out = Command::new("node")
        .current_dir(&browser)
        .arg("dashboard.mjs")
        .arg(&url)
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--chromium")
        .arg(&chromium)
        .args(["--until-ended", "2", "--timeout-ms", "60000"])
        .output()
        .expect("node runs (install Node.js; `make browser-deps`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the dashboard checks failed");

    // What the page last showed, as the script reports it.
    let shown: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the script reports what the page showed");
    // Two runs of 12 images + 1 blank, at least a few dozen volumes each.
    assert!(shown["received"].as_u64().unwrap() > 40, "{shown}");
    assert_eq!(shown["runs"], 2, "{shown}");
    // Run 1 is the warm-up run: the 12 image trials of run 2 decoded and
    // reconstructed, each row with its reconstruction.
    assert_eq!(shown["trials"], 12, "{shown}");
    assert_eq!(shown["reconstructions"], 12, "{shown}");
    assert_eq!(shown["navigations"], 1, "{shown}");
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
    println!("screenshot: {}", screenshot.display());

    // The demo carries on to its summary and exits cleanly.
    let status = demo.0.wait().unwrap();
    // The forwarders end at the pipes' end, right after the exit.
    let rest: Vec<String> = lines.iter().collect();
    assert!(status.success(), "the demo failed: {status}");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("dashboard: was live at http://")),
        "the summary names the dashboard"
    );
}
