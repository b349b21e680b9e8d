//! Quick convergence check of the registration on a smooth analytic phantom.
use boldstream::realign::register::{Registration, RegistrationOptions};
use boldstream::realign::transform::{MotionParams, par_from_ref_to_volume};
use boldstream::volume::{Grid, Volume};
use nalgebra::{Matrix4, Vector3};

fn phantom(p: Vector3<f64>) -> f64 {
    let sig = |d: f64| 1.0 / (1.0 + (-d / 0.7).exp());
    let c = Vector3::new(96.0, 96.0, 54.0);
    let q = p - c;
    let e = (q.x / 70.0).powi(2) + (q.y / 85.0).powi(2) + (q.z / 50.0).powi(2);
    let head = sig((1.0 - e.sqrt()) * 60.0);
    let mut v = 600.0 * head;
    for (cx, cy, cz, r, a) in [
        (20.0, 10.0, 5.0, 15.0, 400.0),
        (-25.0, -30.0, 10.0, 10.0, -300.0),
        (0.0, 40.0, -15.0, 12.0, 250.0),
        (30.0, -20.0, -20.0, 8.0, 300.0),
        (-10.0, 5.0, 25.0, 9.0, -200.0),
    ] {
        let d = (q - Vector3::new(cx, cy, cz)).norm();
        v += a * sig(r - d) * head;
    }
    v += 60.0 * head * ((q.x / 9.0).sin() * (q.y / 11.0).cos() + (q.z / 7.0).sin());
    v
}

fn make(grid: &Grid, m: &Matrix4<f64>) -> Volume {
    let f = grid.vox_to_fsl();
    let [nx, ny, nz] = grid.dims;
    let mut vals = Vec::with_capacity(grid.len());
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let p = Grid::apply(&f, Vector3::new(i as f64, j as f64, k as f64));
                let y = Grid::apply(m, p);
                vals.push(phantom(y) as f32);
            }
        }
    }
    Volume::from_file_order(grid.clone(), vals).unwrap()
}

#[test]
fn recovers_known_motion() {
    let grid = Grid::centred([64, 64, 36], [3.0, 3.0, 3.0]);
    let reference = make(&grid, &Matrix4::identity());
    let reg = Registration::new(&reference, RegistrationOptions::default()).unwrap();
    let c = reg.centre();
    for truth in [
        [0.0, 0.0, 0.0, 0.5, 0.0, 0.0],
        [0.01, -0.02, 0.015, 1.2, -0.7, 0.4],
        [-0.03, 0.02, 0.035, -2.5, 1.8, -1.1],
    ] {
        let tp = MotionParams(truth);
        let vol = make(&grid, &tp.to_matrix(c));
        let t0 = std::time::Instant::now();
        let out = reg.register(&vol, &Matrix4::identity()).unwrap();
        let dt = t0.elapsed();
        let est = par_from_ref_to_volume(&out.ref_to_volume, c);
        let err: Vec<f64> = (0..6).map(|i| est.0[i] - truth[i]).collect();
        eprintln!(
            "truth {truth:?}\nest {:?}\nerr {:?} {:?} its {:?}",
            est.0,
            err,
            dt,
            out.levels.iter().map(|l| l.iterations).collect::<Vec<_>>()
        );
        for i in 0..3 {
            assert!(err[i].abs().to_degrees() < 0.05, "rot {i}: {}", err[i]);
            assert!(err[i + 3].abs() < 0.05, "trans {i}: {}", err[i + 3]);
        }
    }
}
