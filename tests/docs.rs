//! The operator docs stay true: every config key documented is in the example config and
//! the other way round, and every metric the dashboard and the alert rules query is one the
//! relay exports; every relative link in the Markdown files resolves inside the repository.

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
    // Some series exist only for subscriptions that use the feature (OAuth2 tokens, a TLS
    // client certificate's expiry).
    let ca = common::tls::TestCa::new("docs");
    let client = ca.leaf(&["relay"], common::tls::Role::Client);
    let relay = TestRelay::start(&format!(
        "subscriptions: [{{name: a, url: 'http://127.0.0.1:9/', events: ['*']}},
           {{name: b, url: 'http://127.0.0.1:9/', events: ['*'], auth: {{oauth2: {{
             token_url: 'http://127.0.0.1:9/t', client_id: c, client_secret: s}}}}}},
           {{name: c, url: 'https://127.0.0.1:9/', events: ['*'],
             tls: {{client_cert: {}, client_key: {}}}}}]",
        serde_json::to_string(&client.cert_pem).unwrap(),
        serde_json::to_string(&client.key_pem).unwrap(),
    ))
    .await;
    // A delivery that waits (nothing answers on port 9): gauges of nothing have no series.
    let (status, _) = relay
        .post(&serde_json::json!({"type": "t", "data": {}}))
        .await;
    assert_eq!(status, 202);
    let oldest = "hookrelay_oldest_pending_timestamp_seconds";
    common::poll(|| async {
        relay
            .metric(oldest, &[("subscription", "a")])
            .await
            .is_some()
    })
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

/// Every Markdown file of the repository, `target/` and hidden folders left out.
fn markdown_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            markdown_files(&path, out);
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The lines of a Markdown text outside fenced code blocks, inline code spans blanked (a
/// `[i](x)` or `# x` in code is neither a link nor a heading).
fn prose_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut fence: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => {
                let mut prose = String::new();
                for (i, part) in line.split('`').enumerate() {
                    prose.push_str(if i % 2 == 0 { part } else { "" });
                }
                lines.push(prose);
            }
            _ => {}
        }
    }
    lines
}

/// The GitHub anchor of a heading's text: inline links reduced to their text, lowercase,
/// punctuation dropped, spaces turned into hyphens.
fn anchor(heading: &str) -> String {
    let text = regex::Regex::new(r"\[([^\]]*)\]\([^)]*\)")
        .unwrap()
        .replace_all(heading.trim(), "$1");
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors a Markdown file's headings produce, repeats numbered as GitHub does. Code
/// spans count for their text, so they are read from the raw line here.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fence: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(m) = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m)) {
            fence = match fence {
                None => Some(m),
                Some(f) if f == m => None,
                other => other,
            };
            continue;
        }
        if fence.is_some() {
            continue;
        }
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = anchor(&line[hashes..].replace('`', ""));
        let mut name = base.clone();
        let mut n = 0;
        while !seen.insert(name.clone()) {
            n += 1;
            name = format!("{base}-{n}");
        }
    }
    seen
}

/// The relative link targets of a Markdown text (`[text](target)`, images too), with a
/// link's text allowed to run over lines. Web and mail links are left out.
fn relative_links(text: &str) -> Vec<String> {
    let prose = prose_lines(text).join("\n");
    let mut links = Vec::new();
    let mut rest = prose.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        // `(path "title")` and `(<path>)`: the path alone.
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        let web = ["http://", "https://", "mailto:"]
            .iter()
            .any(|s| target.starts_with(s));
        if !web && !target.is_empty() {
            links.push(target.to_string());
        }
        rest = &rest[end..];
    }
    links
}

/// The broken relative links of the Markdown file at `file`: a target that does not exist
/// or lies outside the repository, or an anchor no heading of the target Markdown file
/// produces.
fn broken_links(file: &std::path::Path, text: &str) -> Vec<String> {
    let dir = file.parent().unwrap();
    let mut broken = Vec::new();
    for link in relative_links(text) {
        let (path, fragment) = match link.split_once('#') {
            Some((p, f)) => (p, Some(f)),
            None => (link.as_str(), None),
        };
        let target = if path.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(path)
        };
        if !path.is_empty() && !target.exists() {
            broken.push(format!("{link}: no such file"));
            continue;
        }
        // A clone has only the repository: a file beside it on this machine does not count.
        let inside = std::fs::canonicalize(&target)
            .is_ok_and(|t| t.starts_with(std::fs::canonicalize(ROOT).unwrap()));
        if !path.is_empty() && !inside {
            broken.push(format!("{link}: outside the repository"));
            continue;
        }
        if let Some(fragment) = fragment
            && target.extension().is_some_and(|e| e == "md")
        {
            let target_text = if path.is_empty() {
                text.to_string()
            } else {
                std::fs::read_to_string(&target).unwrap()
            };
            if !anchors(&target_text).contains(fragment) {
                broken.push(format!("{link}: no heading makes #{fragment}"));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = std::path::Path::new(ROOT);
    let mut files = Vec::new();
    markdown_files(root, &mut files);
    let names: Vec<_> = files
        .iter()
        .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["README.md", "ARCHITECTURE.md", "docs/operations.md"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for (file, name) in files.iter().zip(&names) {
        let text = std::fs::read_to_string(file).unwrap();
        checked += relative_links(&text).len();
        for b in broken_links(file, &text) {
            broken.push(format!("{name}: {b}"));
        }
    }
    assert!(checked > 50, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_finds_missing_files_and_anchors() {
    let file = std::path::Path::new(ROOT).join("docs/sample.md");
    let text = "# Top\n\n## A `code` heading, with: punctuation\n\n## Top\n\n\
                [ok](#a-code-heading-with-punctuation) [ok](#top-1) [ok](operations.md#metrics)\n\
                [web](https://example.com/x.md) `[code](nowhere.md)`\n\
                ```\n[fenced](nowhere.md)\n# fenced heading\n```\n\
                [gone](../shared/seeds/README.md) [a\nwrapped text](operations.md#no-such-part)\n\
                [bad anchor](#fenced-heading) [out](../../)\n";
    assert_eq!(
        broken_links(&file, text),
        [
            "../shared/seeds/README.md: no such file",
            "operations.md#no-such-part: no heading makes #no-such-part",
            "#fenced-heading: no heading makes #fenced-heading",
            "../../: outside the repository",
        ]
    );
}

/// The text of a Markdown section: from its `## heading` line to the next `## ` heading.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no section ## {heading}"));
    let body = &text[start + heading.len() + 5..];
    &body[..body.find("\n## ").unwrap_or(body.len())]
}

/// A count written as a digit string or an English word up to twelve.
fn count(word: &str) -> Option<usize> {
    const WORDS: [&str; 13] = [
        "no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve",
    ];
    word.parse()
        .ok()
        .or_else(|| WORDS.iter().position(|w| w.eq_ignore_ascii_case(word)))
}

/// The counts a text states right before `noun` ("six subscriptions", "4 HTTP push"),
/// each with the words that carry it; a word that is no count ("the subscriptions") is
/// no claim.
fn stated_counts(text: &str, noun: &str) -> Vec<(usize, String)> {
    let pattern = format!(r"(?i)\b(\w+) {}\b", regex::escape(noun));
    regex::Regex::new(&pattern)
        .unwrap()
        .captures_iter(&text.replace('\n', " "))
        .filter_map(|c| count(&c[1]).map(|n| (n, c[0].to_string())))
        .collect()
}

/// What the README's description of the example config gets wrong about `config`.
fn example_description_errors(description: &str, config: &hookrelay::Config) -> Vec<String> {
    use hookrelay::subscription::Channel;
    let subs = &config.subscriptions;
    let kind = |f: fn(&Channel) -> bool| subs.iter().filter(|s| f(&s.channel)).count();
    let kinds = [
        ("subscriptions", subs.len()),
        ("HTTP push", kind(|c| matches!(c, Channel::Http { .. }))),
        ("e-mail", kind(|c| matches!(c, Channel::Email { .. }))),
        ("pull", kind(|c| matches!(c, Channel::Pull(_)))),
    ];
    let mut errors = Vec::new();
    for (noun, actual) in kinds {
        let stated = stated_counts(description, noun);
        if stated.is_empty() {
            errors.push(format!("states no count of {noun} (the file has {actual})"));
        }
        for (n, words) in stated {
            if n != actual {
                errors.push(format!("says {words:?}, the file has {actual}"));
            }
        }
    }
    for s in subs {
        if !description.contains(&format!("`{}`", s.name)) {
            errors.push(format!("does not name the subscription `{}`", s.name));
        }
    }
    let listen = &config.listen;
    for addr in [listen.app, listen.api, listen.ops] {
        if !description.contains(&format!("`{addr}`")) {
            errors.push(format!("does not give the listener `{addr}`"));
        }
    }
    if config.reload.watch && !description.contains("`reload`") {
        errors.push("does not mention `reload`, which watches the file".to_string());
    }
    errors
}

#[test]
fn the_readme_describes_the_example_config_as_it_is() {
    let config =
        hookrelay::Config::from_yaml(&read("config.example.yaml"), "config.example.yaml", &|_| {
            None
        })
        .unwrap();
    let readme = read("README.md");
    let errors = example_description_errors(section(&readme, "The example configuration"), &config);
    assert!(
        errors.is_empty(),
        "README.md, \"The example configuration\":\n{}",
        errors.join("\n")
    );
}

#[test]
fn the_example_check_catches_a_stale_description() {
    // Six subscriptions, as config.example.yaml had when the README said four.
    let yaml = "reload: {watch: true}
subscriptions:
  - {name: billing, url: 'http://127.0.0.1:9000/b', events: ['*']}
  - {name: documents, url: 'http://127.0.0.1:9000/d', events: ['*']}
  - {name: audit, url: 'http://127.0.0.1:9000/a', events: ['*']}
  - {name: registrar-notify, url: 'http://127.0.0.1:9000/r', events: ['*']}
  - name: registrar-mail
    mode: email
    events: ['*']
    email: {to: [a@example.com], from: b@example.com, smtp: {host: 127.0.0.1, port: 1025, tls: none}}
  - {name: registrar-poll, mode: pull, events: ['*']}
";
    let config = hookrelay::Config::from_yaml(yaml, "sample", &|_| None).unwrap();
    let stale = "It listens on `127.0.0.1:8787`, `127.0.0.1:8788` and `0.0.0.0:9464`.\n\
                 Three of its four subscriptions push (`billing`, `documents`, `audit`,\n\
                 `registrar-notify`, `registrar-mail`, `registrar-poll`): three HTTP push,\n\
                 no e-mail and one pull; the subscriptions are described above.";
    assert_eq!(
        example_description_errors(stale, &config),
        [
            "says \"four subscriptions\", the file has 6",
            "says \"three HTTP push\", the file has 4",
            "says \"no e-mail\", the file has 1",
            "does not mention `reload`, which watches the file",
        ]
    );
}

#[test]
fn the_readme_links_every_document() {
    let readme = read("README.md");
    let list = section(&readme, "Documentation");
    let linked: BTreeSet<String> = relative_links(list)
        .into_iter()
        .map(|l| l.split('#').next().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = std::fs::read_dir(format!("{ROOT}/docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    assert!(expected.len() >= 4, "{expected:?}");
    expected.extend(
        [
            "ARCHITECTURE.md",
            "CHANGELOG.md",
            "SECURITY.md",
            "helm/hookrelay/README.md",
        ]
        .map(String::from),
    );
    let missing: Vec<_> = expected.iter().filter(|f| !linked.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "README.md's Documentation list does not link {missing:?}"
    );
    let license = section(&readme, "License");
    for file in ["LICENSE-APACHE", "LICENSE-MIT"] {
        assert!(
            relative_links(license).iter().any(|l| l == file),
            "the License section does not link {file}"
        );
    }
}
