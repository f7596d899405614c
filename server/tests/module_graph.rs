//! ARCHITECTURE.md's invariants about `server/src` imports, checked on the source: imports between the
//! crate's top-level modules run one way (no cycle), and only the composition root (`lib.rs`) names `http`.
//! Tests inside a module (`#[cfg(test)] mod tests` at the end of a file) may use anything and are left out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

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

/// The identifiers right after each `crate::`, and inside each `use crate::{…}` group.
fn crate_paths(src: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (at, _) in src.match_indices("crate::") {
        let rest = &src[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The first identifier of each part at the group's own depth (`a::{B, C}` is one part, `a`).
            let (mut depth, mut part_start) = (0usize, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => part_start = true,
                    c if part_start && (c.is_alphanumeric() || c == '_') => {
                        found.insert(ident(&group[i..]));
                        part_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found
}

fn module_graph(root: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let top_of = |path: &Path| -> String {
        let rel = path.strip_prefix(root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        first.trim_end_matches(".rs").to_owned()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| top_of(f))
        .filter(|m| m != "lib")
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let top = top_of(file);
        let mut src = std::fs::read_to_string(file).unwrap();
        if let Some(tests) = src.find("#[cfg(test)]\nmod tests") {
            src.truncate(tests);
        }
        let code: String = src
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut targets = crate_paths(&code);
        if top == "lib" {
            // The root declares its modules: `mod http;` is an edge too.
            targets.extend(code.lines().filter_map(|l| {
                let l = l.trim_start();
                let l = l.strip_prefix("pub ").unwrap_or(l);
                l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
            }));
        }
        for target in targets {
            // An item of the crate root (a re-export, say) counts as importing `lib`.
            let target = if modules.contains(&target) {
                target
            } else {
                "lib".to_owned()
            };
            if target != top {
                graph.entry(top.clone()).or_default().insert(target);
            }
        }
    }
    graph
}

/// One cycle of `graph`, if it has any.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn server_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn imports_between_the_server_modules_run_one_way() {
    let graph = module_graph(&server_src());
    assert!(
        graph
            .get("actor")
            .is_some_and(|deps| deps.contains("relay")),
        "the graph reader is broken: actor must import relay ({graph:?})"
    );
    assert_eq!(find_cycle(&graph), None, "{graph:#?}");
}

#[test]
fn only_the_composition_root_imports_http() {
    let graph = module_graph(&server_src());
    let importers: Vec<&String> = graph
        .iter()
        .filter(|(_, deps)| deps.contains("http"))
        .map(|(module, _)| module)
        .collect();
    assert_eq!(importers, vec!["lib"], "{graph:#?}");
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .into_iter()
        .fold(Graph::new(), |mut g, (from, to)| {
            g.entry(from.to_owned()).or_default().insert(to.to_owned());
            g
        });
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_paths(
            "use crate::{feed::Feed, store::{ItemRow, NewItem}, updates};\nlet x = crate::clock::now_ms();"
        ),
        ["clock", "feed", "store", "updates"]
            .map(String::from)
            .into()
    );
}
