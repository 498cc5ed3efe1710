//! The shape the code must keep (docs/architecture.md): no file of the
//! engine over 400 lines (functions over 80 are refused by clippy's
//! `too_many_lines`, see clippy.toml), and in every crate the top-level
//! modules import each other without a cycle, so each can be read and
//! changed in dependency order. Crates cannot form cycles (Cargo refuses).

#![allow(clippy::unwrap_used)] // a test: a panic is its failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_ENGINE_FILE_LINES: usize = 400;

fn workspace() -> PathBuf {
    // At run time: a build cache shared by two checkouts must not check the
    // other checkout's sources.
    Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_engine_file_is_over_400_lines() {
    let mut files = Vec::new();
    rust_files(&workspace().join("crates/engine/src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, lines)| *lines > MAX_ENGINE_FILE_LINES)
        .map(|(f, lines)| format!("{} ({lines} lines)", f.display()))
        .collect();
    assert!(files.len() > 10, "found only {files:?}");
    assert!(
        long.is_empty(),
        "engine files over {MAX_ENGINE_FILE_LINES} lines: {long:?}"
    );
}

/// The identifiers right after each `crate::` in `text` (with `crate::{a,
/// b::c}`, each of `a` and `b`).
fn crate_paths(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                out.extend(group.split(',').map(|p| ident(p.trim())));
            }
            None => out.push(ident(rest)),
        }
    }
    out
}

/// Top-level module -> the top-level modules it names, for one crate's `src`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let top = |f: &Path| {
        let first = f.strip_prefix(src).unwrap().components().next().unwrap();
        let name = first.as_os_str().to_str().unwrap();
        name.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| top(f))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for f in &files {
        let from = top(f);
        let Some(edges) = graph.get_mut(&from) else {
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        edges.extend(
            crate_paths(&text)
                .into_iter()
                .filter(|to| *to != from && modules.contains(to)),
        );
    }
    graph
}

/// A cycle of `graph`, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in &graph[node] {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_crate_has_modules_importing_each_other_in_a_circle() {
    let root = workspace();
    let mut crates = Vec::new();
    for dir in ["crates", "connectors"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let src = entry.unwrap().path().join("src");
            if src.is_dir() {
                crates.push(src);
            }
        }
    }
    assert!(crates.len() >= 10, "found only {crates:?}");
    let cycles: Vec<String> = crates
        .iter()
        .filter_map(|src| {
            let cycle = find_cycle(&module_graph(src))?;
            Some(format!("{}: {}", src.display(), cycle.join(" -> ")))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "modules importing each other in a circle: {cycles:#?}"
    );
}

#[test]
fn a_cycle_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_paths("use crate::x::Y; use crate::{p, q::R};"),
        vec!["x", "p", "q"]
    );
}
