//! No import circle between files under `src/` (a parent module and its own child files aside),
//! so each file can be understood, tested and moved on its own. Edges are paths starting at
//! `crate::`, `hookrelay::` (main.rs naming the library), `super::` or `self::`, in `use` trees
//! and inline code alike; comments, literals, `#[cfg(test)]` items and `tests.rs` files are
//! left out (test code may import anything). Inline non-test modules are not tracked (none).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// file -> imported file -> names it takes from there.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;
/// module path (`[store, sqlite]`) -> its file.
type Modules = BTreeMap<Vec<String>, String>;

/// Splits source into identifiers, `::` and single punctuation characters, dropping comments
/// and string/char literals (so `// crate::x` or `"crate::x"` make no edge) and every
/// `#[cfg(test)]` item (up to its first `;` outside brackets, or its closing `}`).
fn tokens(src: &str) -> Vec<String> {
    let (mut toks, mut i, mut test_depth) = (Vec::new(), 0, None);
    while let Some(c) = src[i..].chars().next() {
        let rest = &src[i..];
        let word = rest.find(|c: char| !c.is_alphanumeric() && c != '_');
        let word = word.unwrap_or(rest.len());
        let hashes = rest[word..].find(|c| c != '#').unwrap_or(rest.len() - word);
        // How much to drop here: a comment or literal, or a lifetime's quote.
        let skip = if rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if rest.starts_with("/*") {
            rest.find("*/").map_or(rest.len(), |e| e + 2) // nesting is rare
        } else if matches!(&rest[..word], "r" | "br") && rest[word + hashes..].starts_with('"') {
            // A raw string r#"..."# ends at a quote followed by as many hashes.
            let (open, close) = (word + hashes + 1, format!("\"{}", "#".repeat(hashes)));
            let end = rest[open..].find(&close);
            end.map_or(rest.len(), |e| open + e + close.len())
        } else if c == '"' {
            let mut j = 1;
            while j < rest.len() && rest.as_bytes()[j] != b'"' {
                j += if rest.as_bytes()[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(rest.len())
        } else if let Some(lit) = rest.strip_prefix('\'') {
            // A char literal ('x', '\'', 'é'); a lifetime ('a, 'static) loses just its quote.
            let n = lit.chars().next().map_or(0, char::len_utf8);
            match lit.starts_with('\\') {
                true => lit[2..].find('\'').map_or(1, |e| e + 4),
                false if lit[n..].starts_with('\'') => n + 2,
                false => 1,
            }
        } else {
            0
        };
        let len = match skip {
            0 if word > 0 => word,
            0 if rest.starts_with("::") => 2,
            0 => c.len_utf8(),
            n => n,
        };
        i += len;
        if skip > 0 || c.is_whitespace() {
            continue;
        }
        if test_depth.is_none() && rest.starts_with("#[cfg(test)]") {
            test_depth = Some(0); // the attribute's own brackets come back to 0
        }
        match (&mut test_depth, &rest[..len]) {
            (None, tok) => toks.push(tok.to_string()),
            (Some(1), "}") | (Some(0), ";") => test_depth = None,
            (Some(d), "(" | "[" | "{") => *d += 1,
            (Some(d), ")" | "]" | "}") => *d -= 1,
            _ => {}
        }
    }
    toks
}

/// Expands the path or use tree starting at `toks[i]` into full paths, returning the index
/// after it: `crate::{a, b::{c, self}}` gives `crate::a`, `crate::b::c` and `crate::b`.
fn tree(toks: &[String], mut i: usize, mut path: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    while let Some(t) = toks.get(i) {
        if t == "{" {
            i += 1;
            while toks.get(i).is_some_and(|t| t != "}") {
                i = tree(toks, i, path.clone(), out);
                // Past `as Alias` (the name is what is imported) and the comma.
                while toks.get(i).is_some_and(|t| t != "," && t != "}") {
                    i += 1;
                }
                i += usize::from(toks.get(i).is_some_and(|t| t == ","));
            }
            return i + 1;
        }
        if !(t == "*" || t.starts_with(|c: char| c.is_alphabetic() || c == '_')) {
            break;
        }
        path.push(t.clone());
        i += 1;
        if toks.get(i).is_none_or(|t| t != "::") {
            break;
        }
        i += 1;
    }
    if path.len() > 1 && path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    out.push(path);
    i
}

/// The module path of a library file (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`);
/// `None` for main.rs, which is a crate of its own.
fn module_of(file: &str) -> Option<Vec<String>> {
    let rel = file.strip_prefix("src/")?.strip_suffix(".rs")?;
    match rel.strip_suffix("/mod").unwrap_or(rel) {
        "main" => None,
        "lib" => Some(vec![]),
        rel => Some(rel.split('/').map(String::from).collect()),
    }
}

/// Resolves a path to the deepest existing file and the name taken from it: the item, or
/// the module itself for `use crate::a;`.
fn resolve(from: &str, path: &[String], files: &Modules) -> Option<(String, String)> {
    let supers = path.iter().take_while(|s| *s == "super").count();
    let up = |m: Vec<String>| Some(m[..m.len().checked_sub(supers)?].to_vec());
    let here = module_of(from); // main.rs's own `crate::` names no library file
    let (base, rest) = match path[0].as_str() {
        "hookrelay" => (vec![], &path[1..]),
        "crate" => (here.map(|_| vec![])?, &path[1..]),
        "self" => (here?, &path[1..]),
        _ => (up(here?)?, &path[supers..]), // `super`, maybe repeated
    };
    (0..=rest.len()).rev().find_map(|k| {
        let file = files.get(&[base.as_slice(), &rest[..k]].concat())?;
        let name = rest.get(k).or(rest[..k].last()).or(base.last());
        Some((file.clone(), name.map_or("crate", String::as_str).into()))
    })
}

/// The import graph of in-memory sources keyed by path (`src/...`).
fn graph(sources: &BTreeMap<String, String>) -> Graph {
    let module = |f: &String| Some((module_of(f)?, f.clone()));
    let files: Modules = sources.keys().filter_map(module).collect();
    // A module file and its descendants may import each other freely.
    let nested = |(a, b): (Vec<_>, Vec<_>)| a.starts_with(&b) || b.starts_with(&a);
    let mut graph = Graph::new();
    for (file, src) in sources {
        let edges = graph.entry(file.clone()).or_default();
        let toks = tokens(src);
        let mut i = 0;
        while i < toks.len() {
            let root = ["crate", "hookrelay", "super", "self"].contains(&toks[i].as_str());
            let starts = i == 0 || toks[i - 1] != "::";
            if !(root && starts && toks.get(i + 1).is_some_and(|t| t == "::")) {
                i += 1;
                continue;
            }
            let mut paths = Vec::new();
            i = tree(&toks, i, Vec::new(), &mut paths);
            for (target, name) in paths.iter().filter_map(|p| resolve(file, p, &files)) {
                if !module_of(file).zip(module_of(&target)).is_some_and(nested) {
                    edges.entry(target).or_default().insert(name);
                }
            }
        }
    }
    graph
}

/// Every file `from` leads to, directly or not.
fn reach<'g>(graph: &'g Graph, from: &'g str) -> BTreeSet<&'g str> {
    let (mut seen, mut todo) = (BTreeSet::new(), vec![from]);
    while let Some(v) = todo.pop() {
        let next = graph[v].keys().map(String::as_str);
        todo.extend(next.filter(|w| seen.insert(*w)));
    }
    seen
}

/// Strongly connected components of more than one file, each sorted: with a few dozen files,
/// "reaches and is reached back" is simpler than Tarjan and fast enough.
fn circles(graph: &Graph) -> Vec<Vec<&str>> {
    let mut found = Vec::new();
    for v in graph.keys().map(String::as_str) {
        let back = |w: &&str| reach(graph, w).contains(v);
        let circle: Vec<&str> = reach(graph, v).into_iter().filter(back).collect();
        if circle.len() > 1 && !found.contains(&circle) {
            found.push(circle);
        }
    }
    found
}

/// One line per import edge that `keep` accepts, with the names it takes.
fn edges(graph: &Graph, keep: impl Fn(&str, &str) -> bool) -> String {
    let mut lines = String::new();
    for (file, targets) in graph {
        for (target, names) in targets.iter().filter(|(t, _)| keep(file, t.as_str())) {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            lines += &format!("  {file} -> {target}: {}\n", names.join(", "));
        }
    }
    lines
}

/// Each circle's files, then every import inside it, so a developer sees what to move.
fn report(graph: &Graph, circles: &[Vec<&str>]) -> String {
    let mut msg = String::new();
    for scc in circles {
        let files = scc.join("\n  ");
        msg += &format!("import circle between {} files:\n  {files}\n", scc.len());
        msg += &edges(graph, |f, t| scc.contains(&f) && scc.contains(&t));
    }
    msg
}

fn read_sources(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("readable dir entry").path();
        if path.is_dir() {
            read_sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
            let rel = path.strip_prefix(root).expect("under the crate root");
            let parts: Vec<_> = rel.iter().map(|c| c.to_string_lossy()).collect();
            let text = std::fs::read_to_string(&path).expect("utf-8 source");
            out.insert(parts.join("/"), text);
        }
    }
}

#[test]
fn no_import_circle_between_source_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = BTreeMap::new();
    read_sources(&root.join("src"), root, &mut sources);
    let graph = graph(&sources);
    // A parser that finds nothing would pass the rule trivially.
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    assert!(edges > 40, "only {edges} imports: is the parser broken?");
    let found = circles(&graph);
    assert!(found.is_empty(), "{}", report(&graph, &found));
}

#[test]
fn a_synthetic_circle_is_found_and_test_code_comments_strings_and_children_are_not_edges() {
    // In-memory files, each after a `== path` line.
    let files = r##"
== src/main.rs
use hookrelay::{d::Dee, a::child::Kid};
== src/a.rs
mod child; use crate::b::{Bee, bee as b2}; use self::child::Kid;
== src/a/child.rs
use super::Ay; use crate::a::Ay as Again; use self::f::Inner;
== src/b.rs
fn f() -> u8 { let c = '"'; crate::c::see::<u8>(c) }
== src/c.rs
use crate::{
    a::{self, Ay},
    // crate::d::Dee
    f,
};
== src/d.rs
const S: &str = r#"a "crate::b::Bee" b"#; /* crate::b::Bee
   crate::c::see */
const T: &str = "crate::a::Ay \" crate::c::see";
#[cfg(test)]
mod tests { use crate::a::Ay; }
#[cfg(test)] fn helper() -> [u8; 1] { crate::c::see() }
fn late(x: &'static str) { super::f::leaf(); crate::a::make('\''); }
== src/f.rs
pub fn leaf() {}
"##;
    let sources: BTreeMap<String, String> = (files.split("\n== ").skip(1))
        .map(|f| f.split_once('\n').expect("a path line"))
        .map(|(path, src)| (path.to_string(), src.to_string()))
        .collect();
    let graph = graph(&sources);
    // No edge from test code, comments or strings, nor between a.rs and its child.
    let expected = "  src/a.rs -> src/b.rs: Bee, bee
  src/b.rs -> src/c.rs: see
  src/c.rs -> src/a.rs: Ay, a
  src/c.rs -> src/f.rs: f
  src/d.rs -> src/a.rs: make
  src/d.rs -> src/f.rs: leaf
  src/main.rs -> src/a/child.rs: Kid
  src/main.rs -> src/d.rs: Dee
";
    assert_eq!(edges(&graph, |_, _| true), expected);
    let found = circles(&graph);
    assert_eq!(found, [["src/a.rs", "src/b.rs", "src/c.rs"]]);
    let msg = report(&graph, &found);
    let circle = "3 files:\n  src/a.rs\n  src/b.rs\n  src/c.rs\n  src/a.rs -> src/b.rs: Bee, bee\n";
    assert!(msg.contains(circle) && !msg.contains("src/f.rs"), "{msg}");
}
