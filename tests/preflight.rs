//! `boldstream check`: a good configuration is described line by line; each
//! kind of problem is refused with a message naming what is wrong.

use std::path::{Path, PathBuf};

use boldstream::cli::check::check;
use boldstream::formats::nifti::{WriteOptions, write_volume};
use boldstream::types::volume::{Grid, Volume};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/demo")
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("export")).unwrap();
    let path = dir.join("boldstream.toml");
    std::fs::write(
        &path,
        format!("[session]\ndir = \"sessions/s1\"\n\n[ingest]\nwatch_dir = \"export\"\n\n{extra}"),
    )
    .unwrap();
    path
}

fn err_text(path: &Path) -> String {
    format!(
        "{:#}",
        check(path).expect_err("the check should refuse this")
    )
}

#[test]
fn a_good_config_is_described() {
    let tmp = tempfile::tempdir().unwrap();
    let decode = format!(
        "[decode]\nmodel = \"{}\"\nsubject = \"{}\"\n",
        demo().display(),
        demo().join("subject-sim01").display()
    );
    let cfg = write_config(tmp.path(), &decode);
    let r = check(&cfg).unwrap();
    let text = r.lines.join("\n");
    println!("{text}\n{:?}", r.warnings);
    assert!(text.contains("readable"), "{text}");
    assert!(text.contains("is writable"), "{text}");
    assert!(text.contains("for subject sim-01 (2000 voxels)"), "{text}");
    for role in ["adapter", "backbone", "prior", "decoder"] {
        assert!(
            r.lines.iter().any(|l| l.trim_start().starts_with(role)),
            "{role}: {text}"
        );
    }
    // Nothing was created: the session folder appears at start, not here.
    assert!(!tmp.path().join("sessions").exists());
}

#[test]
fn a_config_without_decoding_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "");
    let text = check(&cfg).unwrap().lines.join("\n");
    assert!(text.contains("decoding: off"), "{text}");
    assert!(text.contains("EPI mask"), "{text}");
}

#[test]
fn problems_are_refused_by_name() {
    // A misspelt key: the file and the key.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "[ingest2]\nx = 1\n");
    let e = err_text(&cfg);
    assert!(
        e.contains("ingest2") && e.contains("boldstream.toml"),
        "{e}"
    );

    // A watch folder that does not exist.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "");
    std::fs::remove_dir(tmp.path().join("export")).unwrap();
    let e = err_text(&cfg);
    assert!(e.contains("export"), "{e}");

    // A session folder nowhere writable (not even for root).
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("sessions/s1", "/proc/boldstream-session");
    std::fs::write(&cfg, text).unwrap();
    let e = err_text(&cfg);
    assert!(e.contains("/proc/boldstream-session"), "{e}");

    // A mask whose voxel count is not the subject's.
    let tmp = tempfile::tempdir().unwrap();
    let mask = tmp.path().join("mask.nii.gz");
    let mut vol = Volume::zeros(Grid::centred([8, 8, 8], [3.0; 3]));
    vol.values_mut().iter_mut().for_each(|v| *v = 1.0);
    write_volume(
        &mask,
        &vol,
        &WriteOptions {
            gzip: true,
            ..Default::default()
        },
    )
    .unwrap();
    let cfg = write_config(
        tmp.path(),
        &format!(
            "[realign]\nmask = \"mask.nii.gz\"\n\n[decode]\nmodel = \"{}\"\nsubject = \"{}\"\n",
            demo().display(),
            demo().join("subject-sim01").display()
        ),
    );
    let e = err_text(&cfg);
    assert!(e.contains("512") && e.contains("2000"), "{e}");
}

#[test]
fn serve_addresses_are_checked_and_a_busy_port_is_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    // A port held right now, as a running daemon would hold it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let cfg = write_config(
        tmp.path(),
        &format!(
            "[serve]\nhttp = \"127.0.0.1:{port}\"\nfeedback = \"127.0.0.1:0\"\nudp_targets = [\"127.0.0.1:9\"]\n"
        ),
    );
    let r = check(&cfg).unwrap();
    let text = r.lines.join("\n");
    assert!(
        text.contains(&format!("dashboard on 127.0.0.1:{port}"))
            && text.contains("this machine only"),
        "{text}"
    );
    assert!(text.contains("feedback protocol on 127.0.0.1:0"), "{text}");
    assert!(text.contains("UDP feed to 127.0.0.1:9"), "{text}");
    assert!(text.contains("per-trial result files in"), "{text}");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains(&format!("127.0.0.1:{port}")) && w.contains("cannot bind")),
        "{:?}",
        r.warnings
    );

    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "[serve]\nfeedback = \"localhost\"\n");
    let e = err_text(&cfg);
    assert!(e.contains("feedback") && e.contains("'localhost'"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "[serve]\nstimuli = \"no-such-folder\"\n");
    let e = err_text(&cfg);
    assert!(e.contains("stimuli") && e.contains("no-such-folder"), "{e}");
}

#[test]
fn a_folder_holding_a_session_is_announced_as_a_resume_or_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "[glm]\ntr = 1.5\n");
    let session = tmp.path().join("sessions/s1");
    std::fs::create_dir_all(&session).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        session.join("session.toml"),
        format!("# boldstream 0.1.0 session started 1.0 (unix seconds)\n{text}"),
    )
    .unwrap();
    let r = check(&cfg).unwrap();
    let text_out = r.lines.join("\n");
    assert!(text_out.contains("run will resume it"), "{text_out}");

    // The same folder, a setting that changes results: refused by name.
    std::fs::write(&cfg, text.replace("tr = 1.5", "tr = 2.0")).unwrap();
    let e = err_text(&cfg);
    assert!(
        e.contains("refuse to resume") && e.contains("glm.tr"),
        "{e}"
    );

    // resume = "never": refused.
    std::fs::write(
        &cfg,
        text.replace("[session]\n", "[session]\nresume = \"never\"\n"),
    )
    .unwrap();
    let e = err_text(&cfg);
    assert!(e.contains("never"), "{e}");
}

/// `max_wait` comes from the config file: a negative, zero, `nan` or `inf`
/// value is refused by name, with or without a model (it used to panic in
/// `Duration::from_secs_f64` when the decode stage started).
#[test]
fn an_unusable_max_wait_is_refused_not_a_panic() {
    for value in ["-1", "nan", "inf", "0"] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = write_config(tmp.path(), &format!("[decode]\nmax_wait = {value}\n"));
        let text = err_text(&cfg);
        assert!(text.contains("max_wait"), "{value}: {text}");
        assert!(
            text.contains("positive number of seconds"),
            "{value}: {text}"
        );
        let config = boldstream::decode::DecodeConfig {
            max_wait: Some(value.parse().unwrap()),
            ..Default::default()
        };
        let err = boldstream::decode::DecodeStage::start(&config)
            .expect_err("the decode stage should refuse it");
        assert!(err.to_string().contains("max_wait"), "{value}: {err}");
    }
    // A good value still starts a pass-through stage.
    let config = boldstream::decode::DecodeConfig {
        max_wait: Some(2.5),
        ..Default::default()
    };
    assert!(boldstream::decode::DecodeStage::start(&config).is_ok());
}
