//! The host's layers, checked: each crate under `host/` depends only on crates of lower layers
//! (`cargo` then refuses any import that runs upward), only the runtime and above compile
//! wasmtime, and inside each crate the files import each other without a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The host's crates, lowest first, with their layer: a crate may depend only on crates of a
/// lower layer (journal and locks are side by side and know nothing of each other).
const LAYERS: &[(&str, u32)] = &[
    // What tests share (a dev-dependency only): it knows no other wasaga crate.
    ("testkit", 0),
    ("core", 0),
    ("db", 1),
    ("journal", 2),
    ("locks", 2),
    ("participants", 3),
    ("runtime", 4),
    ("server", 5),
    ("cli", 6),
];

/// Crates below this layer must not pull in the Wasm engine.
const WASMTIME_FROM_LAYER: u32 = 4;

fn host_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .join("host")
}

fn layer_of(dir: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(name, _)| *name == dir)
        .map(|(_, layer)| *layer)
        .unwrap_or_else(|| panic!("host/{dir} is not in LAYERS: give it a layer"))
}

/// The dependency names a manifest lists, in every dependency table.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut in_table = false;
    let mut names = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = line.ends_with("dependencies]");
            continue;
        }
        if in_table && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_end_matches(".workspace").to_owned();
            if !name.is_empty() && !name.starts_with('#') {
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn every_host_crate_depends_only_on_lower_layers() {
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(host_dir()).expect("host/ is readable") {
        let dir = entry.expect("a directory entry").path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let name = dir
            .file_name()
            .expect("named")
            .to_string_lossy()
            .into_owned();
        let layer = layer_of(&name);
        seen.insert(name.clone());
        let text = std::fs::read_to_string(&manifest).expect("manifest is readable");
        for dep in dependencies(&text) {
            if let Some(lower) = dep.strip_prefix("wasaga-") {
                assert!(
                    layer_of(lower) < layer,
                    "host/{name} depends on wasaga-{lower}, which is not below it"
                );
            }
            if dep.starts_with("wasmtime") {
                assert!(
                    layer >= WASMTIME_FROM_LAYER,
                    "host/{name} depends on {dep}: only the runtime and above compile wasmtime"
                );
            }
        }
    }
    let all: BTreeSet<String> = LAYERS.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(seen, all, "host/ holds exactly the crates LAYERS names");
}

#[test]
fn files_inside_each_host_crate_import_each_other_without_a_circle() {
    for (name, _) in LAYERS {
        let src = host_dir().join(name).join("src");
        let modules = modules_of(&src);
        let edges: BTreeMap<Module, BTreeSet<Module>> = modules
            .iter()
            .map(|(module, path)| {
                let text = std::fs::read_to_string(path).expect("source is readable");
                (module.clone(), imports(module, &code_of(&text), &modules))
            })
            .collect();
        if let Some(circle) = circle(&edges) {
            let shown: Vec<String> = circle.iter().map(shown).collect();
            panic!(
                "host/{name}: these files import each other in a circle: {}",
                shown.join(" -> ")
            );
        }
    }
}

/// A module's path inside its crate; the crate root is the empty path.
type Module = Vec<String>;

fn shown(module: &Module) -> String {
    if module.is_empty() {
        "the crate root".to_owned()
    } else {
        module.join("::")
    }
}

/// Every module of the crate whose sources are under `src`, with its file.
fn modules_of(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("source directory is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut module: Module = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("lib" | "main" | "mod")
            ) {
                module.pop();
            }
            found.insert(module, path);
        }
    }
    found
}

/// A file's code without its tests and comments: what it imports when it is built.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The other modules of the crate that `module`'s code names.
fn imports(module: &Module, code: &str, modules: &BTreeMap<Module, PathBuf>) -> BTreeSet<Module> {
    let mut named = BTreeSet::new();
    let mut add = |path: &[String]| {
        let Some((base, rest)) = anchored(module, path) else {
            return;
        };
        // The deepest module the path goes through.
        let mut target = base.clone();
        let mut walk = base;
        for segment in rest {
            walk.push(segment.clone());
            if modules.contains_key(&walk) {
                target = walk.clone();
            }
        }
        if &target != module && modules.contains_key(&target) {
            named.insert(target);
        }
    };
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let starts_word = at == 0 || !(is_path_char(bytes[at - 1]) || bytes[at - 1] == b'$');
        if starts_word && (bytes[at].is_ascii_alphabetic() || bytes[at] == b'_') {
            let (paths, end) = paths_at(code, at);
            for path in &paths {
                add(path);
            }
            at = end.max(at + 1);
        } else {
            at += 1;
        }
    }
    named
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// Where a path written in `module` starts: `crate::`, `super::`, `self::` or a child module's
/// name; `None` for a path into another crate or a plain name.
fn anchored(module: &Module, path: &[String]) -> Option<(Module, Vec<String>)> {
    let first = path.first()?;
    if path.len() == 1 {
        // A plain name, or `pub(crate)`.
        return None;
    }
    match first.as_str() {
        "crate" => Some((Vec::new(), path[1..].to_vec())),
        "self" => Some((module.clone(), path[1..].to_vec())),
        "super" => {
            let mut base = module.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            Some((base, rest.to_vec()))
        }
        // A child module named from its parent, or a path into another crate (which names
        // no module of this one).
        _ => Some((module.clone(), path.to_vec())),
    }
}

/// The paths written at `at` (several for a `{..}` group), and where they end.
fn paths_at(code: &str, at: usize) -> (Vec<Vec<String>>, usize) {
    let bytes = code.as_bytes();
    let mut segments = Vec::new();
    let mut i = at;
    loop {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        segments.push(code[start..i].to_owned());
        if code[i..].starts_with("::") {
            i += 2;
            if code[i..].starts_with('{') {
                let close = matching_brace(code, i);
                let mut all = Vec::new();
                for item in split_top_level(&code[i + 1..close]) {
                    let item = item.trim();
                    let item_at = code[i + 1..close].find(item).map_or(i + 1, |p| p + i + 1);
                    if item.is_empty() {
                        continue;
                    }
                    if item == "self" {
                        all.push(segments.clone());
                        continue;
                    }
                    let (inner, _) = paths_at(code, item_at);
                    for path in inner {
                        let mut full = segments.clone();
                        full.extend(path);
                        all.push(full);
                    }
                }
                return (all, close + 1);
            }
            if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
                continue;
            }
        }
        return (vec![segments], i);
    }
}

fn matching_brace(code: &str, open: usize) -> usize {
    let mut depth = 0;
    for (offset, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + offset;
                }
            }
            _ => {}
        }
    }
    code.len()
}

fn split_top_level(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

/// A circle in `edges`, if there is one, as the modules along it.
fn circle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        at: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(at) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path
                    .iter()
                    .position(|m| m == at)
                    .expect("open is on the path");
                let mut found = path[from..].to_vec();
                found.push(at.clone());
                return Some(found);
            }
            None => {}
        }
        marks.insert(at.clone(), Mark::Open);
        path.push(at.clone());
        for next in edges.get(at).into_iter().flatten() {
            if let Some(found) = visit(next, edges, marks, path) {
                return Some(found);
            }
        }
        path.pop();
        marks.insert(at.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for module in edges.keys() {
        if let Some(found) = visit(module, edges, &mut marks, &mut Vec::new()) {
            return Some(found);
        }
    }
    None
}

#[test]
fn the_circle_check_sees_a_circle_through_a_group_import() {
    let modules: BTreeMap<Module, PathBuf> = [vec![], vec!["a".to_owned()], vec!["b".to_owned()]]
        .into_iter()
        .map(|m| (m, PathBuf::new()))
        .collect();
    let a = vec!["a".to_owned()];
    let b = vec!["b".to_owned()];
    let from_a = imports(&a, "use crate::{b::Thing, x};", &modules);
    let from_b = imports(
        &b,
        &code_of("pub(crate) fn f() { super::a::g() } // crate::lib_only"),
        &modules,
    );
    assert_eq!(from_a, BTreeSet::from([b.clone(), vec![]]));
    assert_eq!(from_b, BTreeSet::from([a.clone()]));
    let edges = BTreeMap::from([(a.clone(), from_a), (b.clone(), from_b)]);
    assert!(circle(&edges).is_some(), "a -> b -> a is a circle");
    let root_only = imports(
        &vec![],
        "mod a; pub use a::Thing; use std::sync::Arc;",
        &modules,
    );
    assert_eq!(root_only, BTreeSet::from([a]));
}
