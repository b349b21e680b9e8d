//! The layout's rules, checked on the source tree itself:
//! no import circle between the daemon's production modules, and the
//! shared types import nothing else of the crate.
//!
//! A module is a file under `src/` (`foo/mod.rs` is `foo`). Module A
//! imports B when A's code names a path `crate::…` or `super::…` that
//! resolves to B (the longest module prefix). Edges between a module and
//! its own ancestors or descendants are not counted: a parent declaring and
//! re-exporting its children is how Rust modules work, not a circle.
//!
//! `BOLDSTREAM_SRC=/other/src cargo test --test architecture -- --nocapture`
//! prints the circles of another tree (the "before" list in the notes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules outside the daemon's production code: the rehearsal tools
/// behind the `tools` feature, and the binary.
const NOT_PRODUCTION: &[&str] = &["tools", "main"];

fn src_dir() -> PathBuf {
    std::env::var_os("BOLDSTREAM_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"))
}

fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code without comments, string literals and `#[cfg(test)]` modules.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                out.push('\n');
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path the code names, expanded through `use` groups, as segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::"]
            .into_iter()
            .find(|s| bytes[i..].iter().take(s.len()).copied().eq(s.chars()));
        let boundary = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':';
        let Some(start) = starts.filter(|_| boundary) else {
            i += 1;
            continue;
        };
        // Read a path, with `{…}` groups, into its expansions.
        let mut j = i;
        let mut depth = 0usize;
        while j < bytes.len() {
            let c = bytes[j];
            if c == '{' {
                depth += 1;
            } else if c == '}' {
                if depth == 0 {
                    break;
                }
                depth -= 1;
                if depth == 0 {
                    j += 1;
                    break;
                }
            } else if depth == 0 && !(is_ident(c) || c == ':') {
                break;
            }
            j += 1;
        }
        let text: String = bytes[i..j].iter().collect();
        expand(&text, &mut found);
        i += start.len();
    }
    found
}

fn expand(text: &str, out: &mut Vec<Vec<String>>) {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    match text.find('{') {
        None => out.push(
            text.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        Some(b) => {
            let prefix = &text[..b];
            let inner = text[b + 1..].strip_suffix('}').unwrap_or(&text[b + 1..]);
            let mut depth = 0;
            let mut part = String::new();
            let mut parts = Vec::new();
            for c in inner.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(std::mem::take(&mut part));
                        continue;
                    }
                    _ => {}
                }
                part.push(c);
            }
            parts.push(part);
            for p in parts.into_iter().filter(|p| !p.is_empty()) {
                expand(&format!("{prefix}{p}"), out);
            }
        }
    }
}

/// Module → the modules it imports.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = module_of(src, f);
        let is_mod_rs = f.file_stem().is_some_and(|s| s == "mod" || s == "lib");
        let text = std::fs::read_to_string(f).unwrap();
        let entry = g.entry(me.join("/")).or_default();
        for p in paths(&code(&text)) {
            let mut abs: Vec<String> = Vec::new();
            let mut segs = p.into_iter().peekable();
            match segs.next().as_deref() {
                Some("crate") => {}
                Some("super") => {
                    // `super` of foo/bar.rs is foo; of foo/mod.rs, foo's parent.
                    abs = me.clone();
                    if !is_mod_rs || !abs.is_empty() {
                        abs.pop();
                    }
                    if is_mod_rs {
                        abs.pop();
                        abs.extend(me.last().cloned());
                        abs.pop();
                    }
                    while segs.peek().is_some_and(|s| s == "super") {
                        segs.next();
                        abs.pop();
                    }
                }
                _ => continue,
            }
            abs.extend(segs);
            // The longest prefix that is a module.
            let target = (0..=abs.len())
                .rev()
                .map(|n| abs[..n].to_vec())
                .find(|m| modules.contains(m))
                .unwrap_or_default();
            let related = target.starts_with(&me) || me.starts_with(&target);
            if !related {
                entry.insert(target.join("/"));
            }
        }
    }
    g
}

/// Strongly connected components of more than one module (Tarjan).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out.sort();
    t.out
}

fn production(m: &str) -> bool {
    let top = m.split('/').next().unwrap_or("");
    !NOT_PRODUCTION.contains(&top)
}

#[test]
fn no_import_circle_between_production_modules() {
    let g = graph(&src_dir());
    let all = circles(&g);
    for c in &all {
        println!("circle: {}", c.join(" <-> "));
    }
    let prod: BTreeMap<String, BTreeSet<String>> = g
        .iter()
        .filter(|(m, _)| production(m))
        .map(|(m, to)| {
            let to = to.iter().filter(|t| production(t)).cloned().collect();
            (m.clone(), to)
        })
        .collect();
    let bad = circles(&prod);
    assert!(
        bad.is_empty(),
        "import circles between production modules: {bad:?}"
    );
}

/// The circle finder finds circles (so the test above can fail).
#[test]
fn the_circle_finder_sees_a_circle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default().insert("a".into());
    g.entry("d".into()).or_default().insert("a".into());
    assert_eq!(
        circles(&g),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
    let mut p = Vec::new();
    expand("crate::x::{y::{Z, W}, v}", &mut p);
    assert_eq!(p.len(), 3);
    assert_eq!(
        paths("use super::{a, b::C};\nlet x = crate::q::r();").len(),
        3
    );
}

/// The shared types (`src/types`) import nothing else of the crate.
#[test]
fn shared_types_import_nothing_else() {
    let g = graph(&src_dir());
    let mut bad = Vec::new();
    for (m, to) in &g {
        if m == "types" || m.starts_with("types/") {
            for t in to {
                if !(t == "types" || t.starts_with("types/")) {
                    bad.push(format!("{m} -> {t}"));
                }
            }
        }
    }
    assert!(g.contains_key("types/messages"), "no src/types/messages.rs");
    assert!(
        bad.is_empty(),
        "shared types importing other modules: {bad:?}"
    );
}

/// clap and anyhow live at the command-line edge only: `src/cli`, the
/// binary, and the rehearsal tools.
#[test]
fn clap_and_anyhow_only_at_the_command_line_edge() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let m = module_of(&src, f).join("/");
        let edge = m == "main" || m == "cli" || m.starts_with("cli/") || !production(&m);
        if edge {
            continue;
        }
        let text = code(&std::fs::read_to_string(f).unwrap());
        for word in ["anyhow", "clap"] {
            let used = text.match_indices(word).any(|(i, _)| {
                let before = text[..i].chars().next_back();
                let after = text[i + word.len()..].chars().next();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                    && after.is_some_and(|c| c == ':')
            });
            if used {
                bad.push(format!("{m} uses {word}"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}
