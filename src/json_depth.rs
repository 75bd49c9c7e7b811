//! How deep a JSON text nests, measured on its bytes without recursion, so that a hostile
//! body cannot exhaust the stack. A leaf shared by events (the `limits.max_depth` check).

/// True when `json` nests arrays and objects more than `max` levels deep (`1` is a scalar's
/// container: `[1]` and `{"a":1}` are one level; a scalar is none). Brackets inside strings
/// do not count. Stops at the first level past `max`; the text is assumed to be JSON that a
/// parser accepted, so unbalanced input is not diagnosed here.
pub fn exceeds(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::exceeds;

    /// The smallest `max` that `json` does not exceed.
    fn depth(json: &str) -> usize {
        (0..).find(|&max| !exceeds(json.as_bytes(), max)).unwrap()
    }

    #[test]
    fn counts_containers_outside_strings() {
        assert_eq!(depth("1"), 0);
        assert_eq!(depth(r#""[[{""#), 0);
        assert_eq!(depth("[]"), 1);
        assert_eq!(depth(r#"{"a":[1,{"b":[]}],"c":{}}"#), 4);
        assert_eq!(depth(r#"[[1],[2],[3]]"#), 2);
        // An escaped quote does not end the string; an escaped backslash does not escape it.
        assert_eq!(depth(r#"["\"[[", "\\", [[]]]"#), 3);
        assert_eq!(depth(r#"{"k\\":{"x":"}}}"}}"#), 2);
    }

    #[test]
    fn a_hostile_depth_is_measured_without_recursion() {
        let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        assert!(exceeds(deep.as_bytes(), 64));
        assert!(!exceeds(deep.as_bytes(), 1_000_000));
    }
}
