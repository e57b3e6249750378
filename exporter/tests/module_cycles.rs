//! No import cycles between the daemon's top-level modules.
//!
//! The tree of `exporter/src` is meant to read as the data flow (kernel →
//! collectors → exposition → scrape → front door), which holds only while
//! every reference between the top-level modules points one way. The
//! compiler accepts cycles, so this test reads the sources: every
//! `crate::<module>` path (in `use` lists too, and in intra-doc links, which
//! are dependencies a reader follows just the same) is an edge from the
//! top-level module of the file it is in. `lib.rs` and `main.rs`, the
//! composition root, may use everything and are left out.
//!
//! Modules reach each other only through `crate::` paths; `super::` stays
//! inside a module, which the test checks too (`super::super::` would hide
//! an edge).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Edge `from → to`, with one file that makes it, for the message.
type Graph = BTreeMap<String, BTreeMap<String, PathBuf>>;

#[test]
fn top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = top_level_modules(&src);
    let mut graph = Graph::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        let from = module_of(relative);
        if from == "lib" || from == "main" {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable source");
        assert!(
            !text.contains("super::super::"),
            "{}: reach another module through crate::, not super::super::, so the edge is visible",
            relative.display()
        );
        for to in referenced_modules(&text) {
            if to != from && modules.contains(&to) {
                graph.entry(from.clone()).or_default().entry(to).or_insert_with(|| relative.to_path_buf());
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|pair| format!("{} → {} (in {})", pair[0], pair[1], graph[&pair[0]][&pair[1]].display()))
            .collect();
        panic!("import cycle between top-level modules: {}\n  {}", cycle.join(" → "), steps.join("\n  "));
    }
}

#[test]
fn the_reader_finds_references_in_use_lists() {
    let text = "use crate::{\n    kernel::bpf::Kernel,\n    exposition::{encode, histogram},\n};\n\
                fn f() { crate::scrape::run(); }\n/// See [`crate::front_door`].\n";
    let found = referenced_modules(text);
    let expected: BTreeSet<String> =
        ["kernel", "exposition", "scrape", "front_door"].into_iter().map(String::from).collect();
    assert_eq!(found, expected);
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph.entry(from.into()).or_default().insert(to.into(), PathBuf::from(format!("{from}.rs")));
    }
    let cycle = find_cycle(&graph).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    graph.get_mut("c").unwrap().remove("a");
    assert_eq!(find_cycle(&graph), None);
}

/// `src/<name>.rs` and `src/<name>/` are the top-level modules.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    fs::read_dir(src)
        .expect("src is readable")
        .map(|entry| module_of(Path::new(&entry.expect("entry").file_name())))
        .collect()
}

fn module_of(relative: &Path) -> String {
    let first = relative.components().next().expect("non-empty path").as_os_str().to_string_lossy();
    first.strip_suffix(".rs").unwrap_or(&first).to_owned()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The first segment of every `crate::` path in `text`; for a `use
/// crate::{...}` list, the first segment of each item in it.
fn referenced_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            // `kernel_exporter_crate::`, or a word that merely ends in "crate".
            continue;
        }
        if let Some(list) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (index, c) in list.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        found.insert(identifier(&list[index..]));
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(identifier(rest));
        }
    }
    found.remove("");
    found
}

fn identifier(text: &str) -> String {
    text.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// A cycle as `[a, b, ..., a]`, or `None`; depth-first, in name order so the
/// message is the same from run to run.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|on_path| on_path == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}
