//! Fault plans: which volumes the simulated exporter mistreats, and how.
//!
//! In: explicit volume lists and/or per-volume rates with a seed, built in
//! code or parsed from a spec string such as
//! `drop=5,12;dup=7;swap=10;late=15:3;partial=all;corrupt=20:garbage,21:truncated`.
//! Out: per session volume, at most one delivery/content [`Fault`] plus an
//! optional non-atomic ("partial") write ([`FaultPlan::resolve`]).
//!
//! Grammar: clauses separated by `;`, each `name=item,item,…`. An item is a
//! session index (0-based, runs concatenated), a range `a-b` (inclusive),
//! `all` (partial only) or `rate:P` (each volume independently with
//! probability P), each optionally followed by `:ARG`:
//! - `drop`, `swap` (alias `reorder`): no argument;
//! - `dup` (alias `duplicate`): `copy` (default: a second file with a
//!   `_dup` suffix), `rewrite` (the same name written again) or `both`;
//! - `late`: how many volumes late (default 2);
//! - `corrupt`: `garbage`, `truncated`, `empty`, `nan` or `dims` (default
//!   `garbage`; a random kind for rates without an argument);
//! - `partial`: no argument (chunk count and pauses are plan settings).
//!
//! A volume named twice for different faults is an error; rates only touch
//! volumes no explicit item names.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{SimError, mix_seed};

/// Ways a written file can be broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CorruptKind {
    /// Random bytes, as long as the real file, under the valid name.
    Garbage,
    /// The first half of the real file's bytes, never completed.
    Truncated,
    /// A zero-length file.
    Empty,
    /// A valid float file with one slice of NaN voxels.
    Nan,
    /// A valid file on a different grid (one slice fewer).
    Dims,
}

impl CorruptKind {
    /// All kinds, in a fixed order.
    pub const ALL: [CorruptKind; 5] = [
        CorruptKind::Garbage,
        CorruptKind::Truncated,
        CorruptKind::Empty,
        CorruptKind::Nan,
        CorruptKind::Dims,
    ];

    /// The name used in specs and manifests.
    pub fn name(self) -> &'static str {
        match self {
            CorruptKind::Garbage => "garbage",
            CorruptKind::Truncated => "truncated",
            CorruptKind::Empty => "empty",
            CorruptKind::Nan => "nan",
            CorruptKind::Dims => "dims",
        }
    }

    fn parse(s: &str) -> Option<CorruptKind> {
        CorruptKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// How a volume is duplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DupMode {
    /// A second file whose name still parses to the same run and index
    /// (`_dup` before the extension), written a few volumes later.
    Copy,
    /// The same file name written again a few volumes later.
    Rewrite,
    /// Both of the above.
    Both,
}

impl DupMode {
    /// The name used in specs and manifests.
    pub fn name(self) -> &'static str {
        match self {
            DupMode::Copy => "copy",
            DupMode::Rewrite => "rewrite",
            DupMode::Both => "both",
        }
    }
}

/// What goes wrong with one volume (besides a partial write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Never written.
    Drop,
    /// Written, then written again.
    Duplicate(DupMode),
    /// Written after the next volume.
    Swap,
    /// Written this many volumes after its slot.
    Late(usize),
    /// Written broken.
    Corrupt(CorruptKind),
}

impl Fault {
    /// Short name for manifests: `drop`, `duplicate`, `swap`, `late`,
    /// `corrupt`.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::Duplicate(_) => "duplicate",
            Fault::Swap => "swap",
            Fault::Late(_) => "late",
            Fault::Corrupt(_) => "corrupt",
        }
    }

    /// Name with its argument, e.g. `late:3`, `corrupt:nan`.
    pub fn label(&self) -> String {
        match self {
            Fault::Drop | Fault::Swap => self.name().to_string(),
            Fault::Duplicate(m) => format!("duplicate:{}", m.name()),
            Fault::Late(k) => format!("late:{k}"),
            Fault::Corrupt(c) => format!("corrupt:{}", c.name()),
        }
    }
}

/// The faults of one volume after resolving a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VolumeFaults {
    /// Delivery or content fault.
    pub fault: Option<Fault>,
    /// Written non-atomically, in chunks with pauses, straight to its name.
    pub partial: bool,
}

/// A rate rule: which fault, `None` for a random corruption kind.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RateFault {
    Fixed(Fault),
    AnyCorrupt,
}

/// Which volumes get which faults, and how faults behave.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    explicit: BTreeMap<usize, Fault>,
    partial: BTreeSet<usize>,
    partial_all: bool,
    rates: Vec<(RateFault, f64)>,
    partial_rate: f64,
    /// Seed for rate draws and garbage bytes.
    pub seed: u64,
    /// Chunks a partial write is split into.
    pub partial_chunks: usize,
    /// Pause between chunks of a partial write.
    pub partial_pause: Duration,
    /// Volumes between a volume and its duplicate or rewrite.
    pub dup_delay: usize,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            explicit: BTreeMap::new(),
            partial: BTreeSet::new(),
            partial_all: false,
            rates: Vec::new(),
            partial_rate: 0.0,
            seed: 0,
            partial_chunks: 4,
            partial_pause: Duration::from_millis(200),
            dup_delay: 2,
        }
    }
}

fn spec_err(m: String) -> SimError {
    SimError::FaultSpec(m)
}

impl FaultPlan {
    /// No faults: every volume written once, atomically, in order.
    pub fn none() -> FaultPlan {
        FaultPlan::default()
    }

    /// True when nothing would be injected.
    pub fn is_empty(&self) -> bool {
        self.explicit.is_empty()
            && self.partial.is_empty()
            && !self.partial_all
            && self.rates.iter().all(|(_, p)| *p <= 0.0)
            && self.partial_rate <= 0.0
    }

    /// Give session volume `index` a fault (replacing any earlier one).
    pub fn with(mut self, index: usize, fault: Fault) -> FaultPlan {
        self.explicit.insert(index, fault);
        self
    }

    /// Write session volume `index` non-atomically.
    pub fn with_partial(mut self, index: usize) -> FaultPlan {
        self.partial.insert(index);
        self
    }

    /// Write every volume non-atomically.
    pub fn with_partial_all(mut self) -> FaultPlan {
        self.partial_all = true;
        self
    }

    /// Give each volume without an explicit fault this fault with
    /// probability `p` (rules are tried in the order added).
    pub fn with_rate(mut self, fault: Fault, p: f64) -> FaultPlan {
        self.rates
            .push((RateFault::Fixed(fault), p.clamp(0.0, 1.0)));
        self
    }

    /// Corrupt each volume without an explicit fault with probability `p`,
    /// with a random kind.
    pub fn with_corrupt_rate(mut self, p: f64) -> FaultPlan {
        self.rates.push((RateFault::AnyCorrupt, p.clamp(0.0, 1.0)));
        self
    }

    /// Write each volume non-atomically with probability `p`.
    pub fn with_partial_rate(mut self, p: f64) -> FaultPlan {
        self.partial_rate = p.clamp(0.0, 1.0);
        self
    }

    /// Set the seed of rate draws and garbage bytes.
    pub fn with_seed(mut self, seed: u64) -> FaultPlan {
        self.seed = seed;
        self
    }

    /// The faults of each of `n` session volumes. Rate draws come from a
    /// generator per volume, so a volume's fate does not depend on `n`.
    pub fn resolve(&self, n: usize) -> Vec<VolumeFaults> {
        (0..n)
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(self.seed, i as u64));
                let mut drawn = None;
                for (rule, p) in &self.rates {
                    let u: f64 = rng.random();
                    let kind = rng.random_range(0..CorruptKind::ALL.len());
                    if drawn.is_none() && u < *p {
                        drawn = Some(match rule {
                            RateFault::Fixed(f) => *f,
                            RateFault::AnyCorrupt => Fault::Corrupt(CorruptKind::ALL[kind]),
                        });
                    }
                }
                let u_partial: f64 = rng.random();
                VolumeFaults {
                    fault: self.explicit.get(&i).copied().or(drawn),
                    partial: self.partial_all
                        || self.partial.contains(&i)
                        || u_partial < self.partial_rate,
                }
            })
            .collect()
    }

    /// Parse a spec string (see the module documentation).
    pub fn parse(spec: &str) -> Result<FaultPlan, SimError> {
        let mut plan = FaultPlan::default();
        for clause in spec.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (name, items) = clause.split_once('=').ok_or_else(|| {
                spec_err(format!("'{clause}': expected name=items, e.g. drop=5,12"))
            })?;
            let name = name.trim();
            for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                plan.parse_item(name, item)
                    .map_err(|m| spec_err(format!("'{name}={item}': {m}")))?;
            }
        }
        Ok(plan)
    }

    fn parse_item(&mut self, name: &str, item: &str) -> Result<(), String> {
        let mut parts = item.split(':');
        let head = parts.next().unwrap_or_default().trim();
        if head == "rate" {
            let p = parts
                .next()
                .ok_or("rate needs a probability, e.g. rate:0.05")?;
            let p: f64 = p
                .trim()
                .parse()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("rate '{p}' is not a probability between 0 and 1"))?;
            let arg = parts.next().map(str::trim);
            if parts.next().is_some() {
                return Err("too many ':' fields".into());
            }
            if name == "partial" {
                if arg.is_some() {
                    return Err("partial takes no argument".into());
                }
                self.partial_rate = p;
                return Ok(());
            }
            let rule = match (name, arg) {
                ("corrupt", None) => RateFault::AnyCorrupt,
                _ => RateFault::Fixed(fault_of(name, arg)?),
            };
            self.rates.push((rule, p));
            return Ok(());
        }
        let arg = parts.next().map(str::trim);
        if parts.next().is_some() {
            return Err("too many ':' fields".into());
        }
        if head == "all" {
            if name != "partial" {
                return Err("'all' is only for partial (use rate:1 otherwise)".into());
            }
            if arg.is_some() {
                return Err("partial takes no argument".into());
            }
            self.partial_all = true;
            return Ok(());
        }
        let indices = parse_indices(head)?;
        if name == "partial" {
            if arg.is_some() {
                return Err("partial takes no argument".into());
            }
            self.partial.extend(indices);
            return Ok(());
        }
        let fault = fault_of(name, arg)?;
        for i in indices {
            if let Some(prev) = self.explicit.insert(i, fault)
                && prev != fault
            {
                return Err(format!(
                    "volume {i} already has fault {}; one fault per volume",
                    prev.label()
                ));
            }
        }
        Ok(())
    }
}

fn parse_indices(s: &str) -> Result<Vec<usize>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{t}' is not a volume index"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("range {a}-{b} is empty"));
            }
            Ok((a..=b).collect())
        }
        None => Ok(vec![num(s)?]),
    }
}

fn fault_of(name: &str, arg: Option<&str>) -> Result<Fault, String> {
    let no_arg = |f: Fault| match arg {
        None => Ok(f),
        Some(a) => Err(format!("{name} takes no argument (got '{a}')")),
    };
    match name {
        "drop" => no_arg(Fault::Drop),
        "swap" | "reorder" => no_arg(Fault::Swap),
        "dup" | "duplicate" => match arg {
            None | Some("copy") => Ok(Fault::Duplicate(DupMode::Copy)),
            Some("rewrite") => Ok(Fault::Duplicate(DupMode::Rewrite)),
            Some("both") => Ok(Fault::Duplicate(DupMode::Both)),
            Some(a) => Err(format!("dup mode '{a}' is not copy, rewrite or both")),
        },
        "late" => match arg {
            None => Ok(Fault::Late(2)),
            Some(a) => a
                .parse::<usize>()
                .ok()
                .filter(|k| *k >= 1)
                .map(Fault::Late)
                .ok_or_else(|| format!("late delay '{a}' is not a whole number ≥ 1")),
        },
        "corrupt" => match arg {
            None => Ok(Fault::Corrupt(CorruptKind::Garbage)),
            Some(a) => CorruptKind::parse(a).map(Fault::Corrupt).ok_or_else(|| {
                format!("corruption '{a}' is not garbage, truncated, empty, nan or dims")
            }),
        },
        other => Err(format!(
            "unknown fault '{other}' (drop, dup, swap, late, partial, corrupt)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let p = FaultPlan::parse(
            "drop=5,12;dup=7;swap=10;late=15:3;partial=3,4;corrupt=20:garbage,21:truncated,22:empty,23:nan,24:dims",
        )
        .unwrap();
        let r = p.resolve(30);
        assert_eq!(r[5].fault, Some(Fault::Drop));
        assert_eq!(r[12].fault, Some(Fault::Drop));
        assert_eq!(r[7].fault, Some(Fault::Duplicate(DupMode::Copy)));
        assert_eq!(r[10].fault, Some(Fault::Swap));
        assert_eq!(r[15].fault, Some(Fault::Late(3)));
        assert!(r[3].partial && r[4].partial && !r[5].partial);
        assert_eq!(r[23].fault, Some(Fault::Corrupt(CorruptKind::Nan)));
        assert_eq!(r[0], VolumeFaults::default());
        assert!(
            FaultPlan::parse("partial=all")
                .unwrap()
                .resolve(3)
                .iter()
                .all(|v| v.partial)
        );
    }

    #[test]
    fn rejects_bad_specs_with_the_item() {
        for bad in [
            "drop",
            "drop=x",
            "late=3:0",
            "corrupt=2:melted",
            "explode=1",
            "drop=4;swap=4",
            "drop=rate:1.5",
            "swap=all",
            "drop=5-3",
        ] {
            let e = FaultPlan::parse(bad).unwrap_err().to_string();
            assert!(e.contains("fault"), "{bad}: {e}");
        }
    }

    #[test]
    fn rates_are_seeded_and_leave_explicit_faults_alone() {
        let p = FaultPlan::parse("drop=rate:0.3;corrupt=rate:0.2;late=3")
            .unwrap()
            .with_seed(9);
        let a = p.resolve(200);
        assert_eq!(a, p.resolve(200));
        assert_eq!(a[3].fault, Some(Fault::Late(2)));
        let drops = a.iter().filter(|v| v.fault == Some(Fault::Drop)).count();
        assert!((30..90).contains(&drops), "{drops}");
        let other = p.clone().with_seed(10).resolve(200);
        assert_ne!(a, other);
        // A longer session does not change earlier volumes' fates.
        assert_eq!(&p.resolve(300)[..200], &a[..]);
    }
}
