//! BIDS events: round trip, malformed files, and their effect on the series.

use std::path::Path;

use boldstream::formats::events_tsv::EventsError;
use boldstream::tools::simulate::{
    Event, MotionModel, SimError, SynthSeries, SynthSpec, read_events, write_events,
};

fn ev(onset: f64, duration: f64, stim: Option<&str>) -> Event {
    Event {
        onset,
        duration,
        trial_type: "stimulus".into(),
        stim_id: stim.map(String::from),
        modulation: 1.0,
    }
}

#[test]
fn events_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run-01_events.tsv");
    let events = vec![
        ev(6.0, 3.0, Some("img-0001")),
        ev(13.27, 3.0, Some("shared0042")),
        ev(20.125, 0.0, None),
    ];
    write_events(&path, &events).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("onset\tduration\ttrial_type\tstim_id\n"));
    assert!(text.contains("\tn/a\n"));
    assert_eq!(read_events(&path).unwrap(), events);
}

fn parse_error(text: &str) -> (String, usize, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad_events.tsv");
    std::fs::write(&path, text).unwrap();
    match read_events(&path) {
        Err(EventsError::Parse {
            path: p,
            line,
            message,
        }) => {
            assert_eq!(p, path);
            let shown = SimError::Parse {
                path: p.clone(),
                line,
                message: message.clone(),
            }
            .to_string();
            assert!(
                shown.contains(&format!("bad_events.tsv:{line}:")),
                "{shown}"
            );
            (shown, line, message)
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn malformed_events_name_the_file_and_line() {
    let (_, line, msg) = parse_error("onset\tduration\n1\t2\n3\n");
    assert_eq!(line, 3);
    assert!(msg.contains("fields"), "{msg}");
    let (_, line, msg) = parse_error("onset\tduration\n1\t2\n\nabc\t2\n");
    assert_eq!(line, 4);
    assert!(msg.contains("onset 'abc'"), "{msg}");
    let (_, line, _) = parse_error("onset\tduration\n1\t-2\n");
    assert_eq!(line, 2);
    let (_, line, _) = parse_error("onset\tduration\n1\tinf\n");
    assert_eq!(line, 2);
    let (_, line, msg) = parse_error("time\tduration\n1\t2\n");
    assert_eq!(line, 1);
    assert!(msg.contains("onset"), "{msg}");
    let (_, line, _) = parse_error("");
    assert_eq!(line, 1);
    assert!(matches!(
        read_events(Path::new("/nonexistent/events.tsv")),
        Err(EventsError::Io { .. })
    ));
}

#[test]
fn windows_line_endings_and_extra_columns_are_fine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.tsv");
    std::fs::write(
        &path,
        "onset\tduration\ttrial_type\tresponse\tstim_id\r\n2.5\t3\tface\t1\timg-7\r\n",
    )
    .unwrap();
    let e = read_events(&path).unwrap();
    assert_eq!(
        e,
        vec![Event {
            onset: 2.5,
            duration: 3.0,
            trial_type: "face".into(),
            stim_id: Some("img-7".into()),
            modulation: 1.0,
        }]
    );
}

#[test]
fn given_events_drive_the_bold_and_default_design_is_sensible() {
    let base = SynthSpec {
        dims: [16, 18, 12],
        voxel_mm: [9.0, 9.0, 9.0],
        volumes_per_run: 40,
        tr: 1.5,
        motion: MotionModel::Still,
        ..SynthSpec::default()
    };
    let s = SynthSeries::new(SynthSpec {
        events: Some(vec![vec![ev(15.0, 3.0, Some("a"))]]),
        ..base.clone()
    })
    .unwrap();
    assert!((0..10).all(|i| s.frame(i).bold == 0.0));
    let peak = (0..40).map(|i| s.frame(i).bold).fold(0.0, f64::max);
    assert!(peak > 0.9 && peak <= 1.0 + 1e-9, "{peak}");

    let d = SynthSeries::new(SynthSpec {
        runs: 2,
        volumes_per_run: 200,
        ..base
    })
    .unwrap();
    for run in 1..=2 {
        let e = d.events(run);
        assert!(e.len() > 30, "{}", e.len());
        assert!(e.iter().all(|x| x.duration == 3.0 && x.stim_id.is_some()));
        assert!(
            e.windows(2)
                .all(|w| (6.0..=8.0 + 1e-9).contains(&(w[1].onset - w[0].onset)))
        );
    }
    assert_ne!(d.events(1), d.events(2));
    assert!(d.events(3).is_empty());
}
