//! The operator docs stay true: every config key documented is in the example config and
//! the other way round, and every metric the dashboard and the alert rules query is one the
//! relay exports.

mod common;

use std::collections::BTreeSet;

use common::TestRelay;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Dotted key paths in the example config, commented-out keys (`# token: "${X}"`, a key and
/// one value alone on the line) included. Filter nodes and header names are values, not keys.
fn example_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    // (indent, name) of the keys enclosing the current line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    // Below a key whose children are not config keys: its indent.
    let mut opaque: Option<usize> = None;
    // The indent of the `#` of a commented-out section's lines, while in one.
    let mut commented_at: Option<usize> = None;
    for line in read("config.example.yaml").lines() {
        let indent = line.len() - line.trim_start().len();
        let rest = line.trim_start();
        let (indent, rest) = match rest.strip_prefix("- ") {
            Some(r) => {
                // A list item: its keys sit two columns in, and its parent is a list.
                while stack.last().is_some_and(|(i, _)| *i >= indent + 2) {
                    stack.pop();
                }
                if let Some((_, parent)) = stack.last_mut()
                    && !parent.ends_with("[]")
                {
                    parent.push_str("[]");
                }
                (indent + 2, r.trim_start())
            }
            None => (indent, rest),
        };
        // A commented-out key: `# name: value`, with no prose after the value, or a
        // commented-out section `# name:` whose keys follow, indented after the `#`.
        // Indented text after a `#` is a key only inside a commented-out section.
        let (indent, rest) = match rest.strip_prefix("# ") {
            Some(r) if r.starts_with(' ') && commented_at != Some(indent) => continue,
            Some(r) => {
                let inner = r.trim_start();
                (indent + r.len() - inner.len(), format!("# {inner}"))
            }
            None => {
                commented_at = None;
                (indent, rest.to_string())
            }
        };
        let outer = line.len() - line.trim_start().len();
        let rest = rest.as_str();
        let (name, commented) = match rest.strip_prefix("# ") {
            Some(r) => match r.split_once(':') {
                Some((k, "")) if is_key(k) => {
                    commented_at = Some(outer);
                    (k, false)
                }
                Some((k, v)) if is_key(k) && v.starts_with(' ') && is_value(v.trim()) => (k, true),
                _ => continue,
            },
            None => match rest.split_once(':') {
                Some((k, v)) if is_key(k) && (v.is_empty() || v.starts_with(' ')) => (k, false),
                _ => continue,
            },
        };
        if opaque.is_some_and(|o| indent > o) {
            continue;
        }
        opaque = None;
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path: Vec<&str> = stack
            .iter()
            .map(|(_, n)| n.as_str())
            .chain([name])
            .collect();
        keys.insert(path.join("."));
        if !commented {
            stack.push((indent, name.to_string()));
            if matches!(name, "filter" | "headers") {
                opaque = Some(indent);
            }
        }
    }
    keys
}

/// A YAML value alone (one word, or a quoted or flow value), not prose.
fn is_value(v: &str) -> bool {
    !v.contains(' ') || v.starts_with(['[', '{', '"', '\''])
}

fn is_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}

/// Keys documented in docs/configuration.md: the first column of its key tables.
fn documented_keys() -> BTreeSet<String> {
    read("docs/configuration.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |").map(|(k, _)| k.to_string()))
        .filter(|k| {
            k.chars()
                .all(|c| c.is_ascii_lowercase() || "_.[]".contains(c))
        })
        .collect()
}

#[test]
fn every_config_key_is_documented_and_in_the_example() {
    let example = example_keys();
    let documented = documented_keys();
    assert!(
        example.contains("subscriptions[].pull.token"),
        "{example:?}"
    );
    assert!(example.contains("storage.max_size"), "{example:?}");
    let undocumented: Vec<_> = example.difference(&documented).collect();
    let not_in_example: Vec<_> = documented.difference(&example).collect();
    assert!(
        undocumented.is_empty() && not_in_example.is_empty(),
        "in config.example.yaml but not docs/configuration.md: {undocumented:?}\n\
         in docs/configuration.md but not config.example.yaml: {not_in_example:?}"
    );
}

/// `hookrelay_*` names in a text, with histogram suffixes taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("hookrelay_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        // A prefix in prose (`hookrelay_events_*`) names no one metric.
        if !base.ends_with('_') {
            names.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_alerts_query_only_exported_metrics() {
    let relay =
        TestRelay::start("subscriptions: [{name: a, url: 'http://127.0.0.1:9/', events: ['*']}]")
            .await;
    let exported: BTreeSet<String> = relay
        .metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    relay.stop().await;
    for file in [
        "helm/hookrelay/dashboards/hookrelay.json",
        "helm/hookrelay/files/alerts.yaml",
        "docs/operations.md",
    ] {
        let queried = metric_names(&read(file));
        assert!(queried.len() > 5, "{file}: {queried:?}");
        let unknown: Vec<_> = queried.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics the relay does not export: {unknown:?}"
        );
    }
}
