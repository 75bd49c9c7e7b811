//! The `delivery` section: what all push subscriptions share (the relay-wide cap on
//! attempts in flight, an outbound proxy, and host names pinned to addresses).

use std::collections::BTreeMap;
use std::net::IpAddr;

use reqwest::Url;

use crate::yaml::{Issues, Section, as_string, kind};

/// Outbound settings shared by all subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Attempts in flight across all subscriptions.
    pub max_in_flight_total: usize,
    /// Attempts in flight across all API subscriptions together; `None`: a quarter of the
    /// total, or what the config subscriptions leave if that is less.
    pub api_max_in_flight: Option<usize>,
    /// Proxy for outbound requests; never taken implicitly from the environment.
    pub proxy: Option<Url>,
    /// Host names resolved to these addresses instead of through DNS (lowercase names).
    pub hosts: BTreeMap<String, IpAddr>,
}

impl DeliverySettings {
    /// Reads the `delivery` section of the config root.
    pub fn parse(root: &Section<'_>, issues: &mut Issues) -> DeliverySettings {
        let d = root.section(
            "delivery",
            &["max_in_flight_total", "api_max_in_flight", "proxy", "hosts"],
            issues,
        );
        DeliverySettings {
            max_in_flight_total: d.integer("max_in_flight_total", 1..=65_536, 512, issues) as usize,
            api_max_in_flight: d
                .has("api_max_in_flight")
                .then(|| d.integer("api_max_in_flight", 0..=65_536, 0, issues) as usize),
            proxy: d
                .string("proxy", issues)
                .and_then(|p| match Url::parse(&p) {
                    Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                        // A URL is printed in logs and Debug output; credentials must not be.
                        issues.push(&d.at("proxy"), "must not carry credentials");
                        None
                    }
                    Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                    _ => {
                        issues.push(&d.at("proxy"), "is not an http:// or https:// proxy URL");
                        None
                    }
                }),
            hosts: hosts(&d, issues),
        }
    }
}

impl DeliverySettings {
    /// The slots API subscriptions share, once the config subscriptions have `config_slots`.
    pub fn api_pool(&self, config_slots: usize) -> usize {
        let left = self.max_in_flight_total.saturating_sub(config_slots);
        self.api_max_in_flight
            .unwrap_or(self.max_in_flight_total / 4)
            .min(left)
    }

    /// The most one API subscription may hold of `pool`: half, so that one hanging receiver
    /// leaves the other half to the rest.
    pub fn api_share(pool: usize) -> usize {
        (pool / 2).max(1)
    }
}

/// `delivery.hosts`: a mapping of host names to IP addresses, like `/etc/hosts`.
fn hosts(d: &Section<'_>, issues: &mut Issues) -> BTreeMap<String, IpAddr> {
    let mut hosts = BTreeMap::new();
    let path = d.at("hosts");
    let Some(value) = d.get("hosts") else {
        return hosts;
    };
    let Some(map) = value.as_mapping() else {
        issues.push(
            &path,
            format!(
                "expected a mapping of host names to IP addresses, found {}",
                kind(value)
            ),
        );
        return hosts;
    };
    for (key, ip) in map {
        let Some(name) = key.as_str() else {
            issues.push(
                &path,
                format!("keys must be host names, found {}", kind(key)),
            );
            continue;
        };
        let at = format!("{path}.{name}");
        if !is_host_name(name) {
            issues.push(
                &at,
                "is not a host name (letters, digits and '-' in dot-separated labels)",
            );
            continue;
        }
        let Some(text) = as_string(ip, &at, issues) else {
            continue;
        };
        match text.parse::<IpAddr>() {
            Ok(ip) => {
                if hosts
                    .insert(name.trim_end_matches('.').to_ascii_lowercase(), ip)
                    .is_some()
                {
                    issues.push(&at, "named twice (host names are case-insensitive)");
                }
            }
            Err(_) => issues.push(&at, format!("{text:?} is not an IP address")),
        }
    }
    hosts
}

/// True when `name` is a DNS host name (a final dot allowed), not an address.
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<IpAddr>().is_err()
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (DeliverySettings, Issues) {
        let root: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let mut issues = Issues::default();
        let root = Section::new(Some(&root), "", &["delivery"], &mut issues);
        (DeliverySettings::parse(&root, &mut issues), issues)
    }

    #[test]
    fn hosts_map_names_to_addresses() {
        let (d, issues) =
            parse("delivery: {hosts: {Loop.Hookrelay.Test: 127.0.0.1, 'v6.test.': '::1'}}");
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(d.hosts["loop.hookrelay.test"], IpAddr::from([127, 0, 0, 1]));
        assert_eq!(d.hosts["v6.test"], "::1".parse::<IpAddr>().unwrap());
        let (d, _) = parse("{}");
        assert!(d.hosts.is_empty());
    }

    #[test]
    fn hosts_report_every_bad_entry_with_its_path() {
        let (_, issues) = parse(
            "delivery: {hosts: {'bad host': 127.0.0.1, '10.0.0.1': 10.0.0.2, a.test: nowhere, b.test: 1.2.3.4, B.TEST: 1.2.3.5}}",
        );
        let text = format!("{issues:?}");
        assert!(text.contains("delivery.hosts.bad host"), "{text}");
        assert!(text.contains("delivery.hosts.10.0.0.1"), "{text}");
        assert!(text.contains("is not an IP address"), "{text}");
        assert!(text.contains("named twice"), "{text}");
        let (_, issues) = parse("delivery: {hosts: [a]}");
        assert!(format!("{issues:?}").contains("delivery.hosts"));
    }
}
