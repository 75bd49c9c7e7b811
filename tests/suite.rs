//! The suite's own rules, read from the test sources: a plain `cargo test` on a machine with
//! only Rust runs every test it does not report as ignored, and every ignored test says why.
//! A test that runs a program cargo does not build (python3, a shell, `kill`, pgbouncer...)
//! would otherwise fail, or pass without checking, where that program is missing.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;

/// A process started from a program, std's or tokio's `Command`.
static SPAWN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"Command::new\s*\(").unwrap());
/// Any ignore attribute, to be checked against `REASONED`.
static IGNORE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"#\[\s*ignore\b[^\]]*\]").unwrap());
/// An ignore attribute with its reason, `#[ignore = "..."]`.
static REASONED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"^#\[\s*ignore\s*=\s*"((?:[^"\\]|\\.)*)"\s*\]$"#).unwrap());
/// A test function's attribute, `#[test]` or `#[tokio::test(...)]`.
static TEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"#\[\s*(?:tokio::)?test\b[^\]]*\]").unwrap());
/// How an ignored test says why (split, so this file's own text holds no such attribute).
const REASON_FORM: &str = concat!("#[", "ignore = \"needs ...\"]");
/// The end of a test's attributes.
static FN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bfn\s").unwrap());

/// Every `.rs` file under `dir`, recursively, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The text inside the parentheses that open at `open` (just after the `(`).
fn argument(text: &str, open: usize) -> &str {
    let mut depth = 1;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 1 => return text[open..open + i].trim(),
            ')' => depth -= 1,
            _ => {}
        }
    }
    text[open..].trim()
}

/// Whether a `Command::new` argument names a binary cargo builds for the tests.
fn built_by_cargo(program: &str) -> bool {
    program.ends_with("bin()") || program.starts_with("env!(\"CARGO_BIN_EXE_")
}

/// The 1-based line of byte offset `at`.
fn line(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// What breaks the rules in one source file; `shared` for `tests/common`, which every test
/// file compiles.
fn problems(name: &str, text: &str, shared: bool) -> Vec<String> {
    let mut found = Vec::new();
    for m in IGNORE.find_iter(text) {
        let reasoned = REASONED
            .captures(m.as_str())
            .is_some_and(|c| !c[1].trim().is_empty());
        if !reasoned {
            found.push(format!(
                "{name}:{}: `{}` gives no reason: write {REASON_FORM}",
                line(text, m.start()),
                m.as_str()
            ));
        }
    }
    let foreign: Vec<(usize, &str)> = SPAWN
        .find_iter(text)
        .map(|m| (m.start(), argument(text, m.end())))
        .filter(|(_, program)| !built_by_cargo(program))
        .collect();
    let Some(&(first, program)) = foreign.first() else {
        return found;
    };
    if shared {
        found.push(format!(
            "{name}:{}: runs {program}, which cargo does not build, from the harness every \
             test uses; run it only from a test file whose tests are all ignored with a reason",
            line(text, first)
        ));
        return found;
    }
    let running: Vec<String> = TEST
        .find_iter(text)
        .filter(|m| {
            let after = &text[m.end()..];
            let attributes = FN.find(after).map_or(after, |f| &after[..f.start()]);
            !IGNORE
                .find_iter(attributes)
                .any(|i| REASONED.is_match(i.as_str()))
        })
        .map(|m| line(text, m.start()).to_string())
        .collect();
    if !running.is_empty() {
        found.push(format!(
            "{name}:{}: runs {program}, which cargo does not build, but its tests on lines {} \
             are not ignored: add {REASON_FORM} to each, or move them to another file",
            line(text, first),
            running.join(", ")
        ));
    }
    found
}

#[test]
fn tests_run_only_what_cargo_builds_unless_ignored_with_a_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let common = root.join("common");
    let files = sources(&root);
    assert!(files.len() > 20, "found only {files:?}");
    let found: Vec<String> = files
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let name = path.strip_prefix(&root).unwrap().display().to_string();
            problems(&format!("tests/{name}"), &text, path.starts_with(&common))
        })
        .collect();
    assert!(found.is_empty(), "\n{}", found.join("\n"));
}

/// A test file built from parts, so that this file's own text holds none of what it checks.
fn sample(attributes: &str, program: &str) -> String {
    format!(
        "{attributes}\nasync fn a_test() {{\n    let _ = std::process::{}({program}).status();\n}}\n",
        ["Command", "new"].join("::")
    )
}

#[test]
fn the_rules_catch_what_they_are_for() {
    let bare = format!("#[tokio::test]\n#[{}]", "ignore");
    let reasoned = format!("#[tokio::test]\n#[{} = \"needs python3\"]", "ignore");
    let empty = format!("#[test]\n#[{} = \" \"]", "ignore");
    let plain = "#[tokio::test(flavor = \"multi_thread\")]";

    // A foreign program in a test that runs: caught, with the test's line.
    let found = problems("t.rs", &sample(plain, "\"python3\""), false);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("t.rs:3: runs \"python3\""),
        "{found:?}"
    );
    assert!(found[0].contains("tests on lines 1 are not"), "{found:?}");
    // Ignored with a reason: fine, in a test file; never in the shared harness.
    assert!(problems("t.rs", &sample(&reasoned, "\"sh\""), false).is_empty());
    assert_eq!(
        problems("common/x.rs", &sample(&reasoned, "\"kill\""), true).len(),
        1
    );
    // A bare or empty ignore is refused, whatever the test runs.
    assert_eq!(problems("t.rs", &sample(&bare, "bin()"), false).len(), 1);
    assert_eq!(problems("t.rs", &sample(&empty, "bin()"), false).len(), 1);
    // Binaries cargo builds are fine anywhere.
    for program in [
        "bin()",
        "common::bin()",
        "env!(\"CARGO_BIN_EXE_hookrelay\")",
    ] {
        assert!(problems("t.rs", &sample(plain, program), false).is_empty());
        assert!(problems("c.rs", &sample(plain, program), true).is_empty());
    }
    // A program chosen at run time is foreign too.
    assert_eq!(
        problems("t.rs", &sample(plain, "PGBOUNCER"), false).len(),
        1
    );
}
