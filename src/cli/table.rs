//! Output for people: aligned columns, and the text of a JSON value in a cell.

use serde_json::Value;

/// Columns separated by two spaces, each as wide as its widest cell; the last is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with this header row.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row of cells (control characters become spaces, so a cell cannot break the
    /// layout or send the terminal escape sequences).
    pub fn row(&mut self, cells: Vec<String>) {
        let clean = |c: String| -> String {
            c.chars()
                .map(|ch| if ch.is_control() { ' ' } else { ch })
                .collect()
        };
        self.rows.push(cells.into_iter().map(clean).collect());
    }

    /// The table as lines of text, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                let width = |r: &Vec<String>| r.get(i).map_or(0, |c| c.chars().count());
                self.rows.iter().map(width).max().unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A member's text for a cell: strings as they are, `-` for absent or `null`, other values
/// as compact JSON.
pub fn cell(v: &Value, key: &str) -> String {
    text(v.get(key).unwrap_or(&Value::Null))
}

/// A value's text for a cell (see [`cell`]).
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How long ago an RFC 3339 time was, rounded down to the second (`3m 12s`); `-` when it is
/// not a time.
pub fn age(v: &Value, now: chrono::DateTime<chrono::Utc>) -> String {
    let Some(at) = v
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    else {
        return "-".into();
    };
    let secs = (now - at.with_timezone(&chrono::Utc)).num_seconds().max(0);
    humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(&["ID", "NAME", "NOTE"]);
        t.row(vec!["1".into(), "billing".into(), "-".into()]);
        t.row(vec!["1234".into(), "a".into(), "two\nlines\x1b[31m".into()]);
        assert_eq!(
            t.render(),
            "ID    NAME     NOTE\n1     billing  -\n1234  a        two lines [31m\n"
        );
    }

    #[test]
    fn cells_show_strings_bare_and_null_as_a_dash() {
        let v = json!({"s": "x", "n": 3, "z": null, "a": ["p", "q"]});
        assert_eq!(
            ["s", "n", "z", "a", "missing"].map(|k| cell(&v, k)),
            ["x", "3", "-", "[\"p\",\"q\"]", "-"]
        );
    }

    #[test]
    fn ages_round_down_to_the_second() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T21:01:03.900Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(age(&json!("2026-11-22T20:58:50.730Z"), now), "2m 13s");
        assert_eq!(age(&json!("2026-11-22T22:00:00Z"), now), "0s");
        assert_eq!(age(&json!(null), now), "-");
    }
}
