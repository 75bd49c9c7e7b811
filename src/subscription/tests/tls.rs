//! The `tls` section: files and inline PEM, every refusal with its path, the API's refusal of
//! file paths, and the digest that tells a rotated certificate apart.

use std::path::Path;

use serde_yaml::Value;

use super::super::*;
use crate::yaml::Issues;

/// A certificate for `a.test` and its key, as PEM.
fn pair() -> (String, String) {
    let (cert, key) = crate::pem::test_pair();
    (cert.pem(), key.serialize_pem())
}

/// `tls: {tls}` on an https subscription, parsed with files relative to `base`.
fn parse_in(base: &Path, url: &str, tls: &str) -> Result<Subscription, Vec<String>> {
    let v: Value = serde_yaml::from_str(&format!(
        "{{name: a, url: '{url}', events: [x], tls: {tls}}}"
    ))
    .unwrap();
    let mut issues = Issues::default();
    let files = Files {
        base: Some(base),
        allowed: true,
    };
    let s = Subscription::parse(&v, "subscriptions[0]", &files, &mut issues);
    match issues.is_empty() {
        true => Ok(s.unwrap()),
        false => Err(issues.0.iter().map(|i| i.to_string()).collect()),
    }
}

fn tls_of(s: &Subscription) -> &TlsSettings {
    s.http().unwrap().tls.as_deref().unwrap()
}

#[test]
fn files_resolve_against_the_config_directory_and_inline_pem_works_too() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pair();
    std::fs::write(dir.path().join("c.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("c.key"), &key).unwrap();
    let s = parse_in(
        dir.path(),
        "https://h/",
        "{client_cert: c.crt, client_key: c.key, ca: c.crt, server_name: receiver.test}",
    )
    .unwrap();
    let tls = tls_of(&s);
    assert_eq!(tls.chain.len(), 1);
    assert_eq!(tls.roots.len(), 1);
    assert!(tls.not_after.is_some());
    assert_eq!(tls.sources.client_key, Some(dir.path().join("c.key")));
    // Debug never shows the key.
    let shown = format!("{s:?}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let body = key.lines().nth(1).unwrap();
    assert!(!shown.contains(body));

    let inline = serde_json::json!({"client_cert": cert, "client_key": key});
    let s = parse_in(dir.path(), "https://h/", &inline.to_string()).unwrap();
    assert!(tls_of(&s).sources.files().next().is_none());
}

#[test]
fn each_problem_is_reported_at_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pair();
    let (_, other_key) = pair();
    std::fs::write(dir.path().join("c.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("other.key"), &other_key).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let d = dir.path().display();
    let errors = |url: &str, tls: &str| parse_in(dir.path(), url, tls).unwrap_err();

    assert_eq!(
        errors("http://h/", "{ca: c.crt}"),
        ["subscriptions[0].tls: applies to https URLs only"]
    );
    assert_eq!(
        errors("https://h/", "{client_cert: c.crt}"),
        ["subscriptions[0].tls: client_cert and client_key go together"]
    );
    let missing = errors("https://h/", "{ca: nope.crt}");
    assert!(
        missing[0].starts_with(&format!(
            "subscriptions[0].tls.ca: cannot read {d}/nope.crt: "
        )),
        "{missing:?}"
    );
    assert_eq!(
        errors("https://h/", "{ca: key.pem}"),
        [format!(
            "subscriptions[0].tls.ca: {d}/key.pem holds no certificate"
        )]
    );
    assert_eq!(
        errors("https://h/", "{client_cert: c.crt, client_key: other.key}"),
        [format!(
            "subscriptions[0].tls.client_key: {d}/other.key does not match the certificate in {d}/c.crt"
        )]
    );
    let encrypted =
        "'-----BEGIN ENCRYPTED PRIVATE KEY-----\n\n MIIB\n\n -----END ENCRYPTED PRIVATE KEY-----'";
    assert_eq!(
        errors(
            "https://h/",
            &format!("{{client_cert: c.crt, client_key: {encrypted}}}")
        ),
        [
            "subscriptions[0].tls.client_key: encrypted keys are not supported (decrypt it with openssl pkey)"
        ]
    );
    assert_eq!(
        errors("https://h/", "{server_name: 'x y'}"),
        ["subscriptions[0].tls.server_name: \"x y\" is not a DNS name or IP address"]
    );
    assert_eq!(
        errors("https://h/", "{verify: false}"),
        [
            "subscriptions[0].tls.verify: unknown field (expected one of: client_cert, client_key, ca, server_name)"
        ]
    );
}

#[test]
fn api_documents_take_inline_pem_only() {
    let (cert, _) = pair();
    let mut issues = Issues::default();
    let doc =
        serde_json::json!({"url": "https://h/", "events": ["x"], "tls": {"ca": "/etc/passwd"}});
    assert!(Subscription::from_api(doc, "id", (1, 1), &mut issues).is_none());
    assert_eq!(
        issues.0[0].to_string(),
        "tls.ca: must be PEM text; file paths are for the config file only"
    );
    let doc = serde_json::json!({"url": "https://h/", "events": ["x"], "tls": {"ca": cert}});
    let mut issues = Issues::default();
    let s = Subscription::from_api(doc, "id", (1, 1), &mut issues).unwrap();
    assert_eq!(tls_of(&s).roots.len(), 1);
}

#[test]
fn a_rotated_file_changes_the_digest_and_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.crt");
    std::fs::write(&path, pair().0).unwrap();
    let first = parse_in(dir.path(), "https://h/", "{ca: ca.crt}").unwrap();
    let again = parse_in(dir.path(), "https://h/", "{ca: ca.crt}").unwrap();
    assert!(first.same_run(&again));
    std::fs::write(&path, pair().0).unwrap();
    let rotated = parse_in(dir.path(), "https://h/", "{ca: ca.crt}").unwrap();
    assert_eq!(first.spec, rotated.spec);
    assert!(!first.same_run(&rotated));
}

#[test]
fn expiry_warnings_start_thirty_days_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pair();
    let inline = serde_json::json!({"client_cert": cert, "client_key": key});
    let s = parse_in(dir.path(), "https://h/", &inline.to_string()).unwrap();
    let tls = tls_of(&s);
    let at = tls.not_after.unwrap();
    assert_eq!(tls.expiry_warning(at - 31 * 86_400), None);
    assert!(
        tls.expiry_warning(at - 10 * 86_400)
            .unwrap()
            .ends_with("in 10 day(s)")
    );
    assert!(
        tls.expiry_warning(at + 1)
            .unwrap()
            .starts_with("tls.client_cert: expired at ")
    );
}
