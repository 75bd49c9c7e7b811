//! `${VAR}` and `${VAR:-default}` expansion inside parsed YAML scalars.
//!
//! Expanding after parsing means a secret holding `"`, `#` or a newline can never change the
//! document's structure. `$${` stands for a literal `${`.

use serde_yaml::Value;

use crate::yaml::{Issues, index, join};

/// Expands references in every string scalar of `value`, recording unknown variables.
pub fn expand_tree(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    issues: &mut Issues,
) {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                match expand(s, lookup) {
                    Ok(expanded) => *s = expanded,
                    Err(reason) => issues.push(path, reason),
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_tree(item, &index(path, i), lookup, issues);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().map(str::to_string).unwrap_or_default();
                expand_tree(v, &join(path, &key), lookup, issues);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, lookup, issues),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Expands one string; the error names the missing variable or the malformed reference.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                "unterminated ${ reference (write $${ for a literal ${)".to_string()
            })?;
            let reference = &after[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (reference, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name in ${{{reference}}}"));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PASSWORD" => Some("p\"a#s\ns: x".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_references_defaults_and_escapes() {
        assert_eq!(expand("${PASSWORD}", &env).unwrap(), "p\"a#s\ns: x");
        assert_eq!(expand("a-${MISSING:-dflt}-b", &env).unwrap(), "a-dflt-b");
        assert_eq!(expand("${EMPTY:-x}", &env).unwrap(), "");
        assert_eq!(
            expand("$${LITERAL} and $5", &env).unwrap(),
            "${LITERAL} and $5"
        );
        assert!(
            expand("${MISSING}", &env)
                .unwrap_err()
                .contains("MISSING is not set")
        );
        assert!(expand("${OPEN", &env).unwrap_err().contains("unterminated"));
        assert!(
            expand("${BAD-NAME}", &env)
                .unwrap_err()
                .contains("invalid variable name")
        );
    }

    #[test]
    fn secrets_cannot_change_structure() {
        let mut v: Value = serde_yaml::from_str("auth:\n  password: ${PASSWORD}\nn: 5\n").unwrap();
        let mut issues = Issues::default();
        expand_tree(&mut v, "", &env, &mut issues);
        assert!(issues.is_empty());
        assert_eq!(v["auth"]["password"].as_str().unwrap(), "p\"a#s\ns: x");
        assert_eq!(v.as_mapping().unwrap().len(), 2);
    }

    #[test]
    fn missing_variable_is_reported_with_its_path() {
        let mut v: Value = serde_yaml::from_str("subscriptions:\n  - url: ${NOPE}\n").unwrap();
        let mut issues = Issues::default();
        expand_tree(&mut v, "", &env, &mut issues);
        assert_eq!(issues.0[0].path, "subscriptions[0].url");
        assert!(issues.0[0].reason.contains("NOPE is not set"));
    }
}
