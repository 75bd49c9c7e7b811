//! Where deliveries may connect. No subscription may reach the relay's own listeners (each
//! delivery would be ingested as a new event: a loop). Subscriptions registered over the API
//! are held to more: anyone holding the API token can name a URL, so link-local and cloud
//! metadata addresses are refused (unless `api.allowed_destinations` names them), and when an
//! allow-list is set only its hosts and networks are reachable. API URLs are checked when
//! registered; every name, of any subscription, is checked again on the addresses it resolves
//! to at each connection, so no name (an `/etc/hosts` alias, a wildcard DNS name) can point a
//! delivery somewhere refused. Names in `delivery.hosts` resolve to their address first.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tower::BoxError;

use crate::subscription::{Auth, Subscription};

/// Networks refused by default: link-local (where cloud metadata services live) and the
/// AWS IPv6 metadata address. IPv4-mapped IPv6 forms are folded to IPv4 before the check.
const REFUSED_NETS: &[&str] = &["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"];

/// One entry of `api.allowed_destinations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A host name, exactly (case-insensitive).
    Host(String),
    /// Any subdomain of this suffix (`*.example.com` is stored as `.example.com`).
    Suffix(String),
    /// An address or network.
    Net(IpNet),
}

impl Allowed {
    /// Parses `host`, `*.domain`, an IP address or a CIDR; `None` when it is none of them.
    pub fn parse(text: &str) -> Option<Allowed> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Some(Allowed::Net(net));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(Allowed::Net(IpNet::from(ip)));
        }
        let (suffix, host) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return None;
        }
        let host = host.to_ascii_lowercase();
        Some(if suffix {
            Allowed::Suffix(format!(".{host}"))
        } else {
            Allowed::Host(host)
        })
    }
}

/// The destination policy for API-registered subscriptions.
#[derive(Debug, Clone)]
pub struct DestinationGuard {
    allowed: Vec<Allowed>,
    refused: Vec<IpNet>,
    /// The relay's own listeners.
    own: Vec<SocketAddr>,
}

impl DestinationGuard {
    /// A guard with `allowed` (empty: any destination not refused) and the relay's listeners.
    pub fn new(allowed: Vec<Allowed>, own: &[SocketAddr]) -> Self {
        DestinationGuard {
            allowed,
            refused: REFUSED_NETS
                .iter()
                .map(|n| n.parse().expect("valid network"))
                .collect(),
            own: own.to_vec(),
        }
    }

    /// Why `url` may not be registered, if it may not.
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {:?} is not http or https", url.scheme()));
        }
        if literal_targets_listener(url, self, true) {
            return Err("points at one of the relay's own listeners (a delivery loop)".into());
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(ip.into(), false),
            Some(url::Host::Ipv6(ip)) => self.check_ip(ip.into(), false),
            Some(url::Host::Domain(host)) => {
                // A name outside the allow-list may still resolve into an allowed network;
                // that is decided per resolution.
                let has_nets = self.allowed.iter().any(|a| matches!(a, Allowed::Net(_)));
                if self.allowed.is_empty() || self.host_allowed(host) || has_nets {
                    Ok(())
                } else {
                    Err(format!("host {host:?} is not in api.allowed_destinations"))
                }
            }
            None => Err("has no host".into()),
        }
    }

    /// Why the guard refuses a subscription's destination: the field and the reason.
    pub fn check_subscription(&self, sub: &Subscription) -> Result<(), (String, String)> {
        if let Some(http) = sub.http() {
            self.check_url(&http.url)
                .map_err(|r| ("url".to_string(), r))?;
            // The token endpoint is a destination too: it gets the client's secret.
            if let Some(Auth::OAuth2(o)) = &http.auth {
                self.check_url(&o.token_url)
                    .map_err(|r| ("auth.oauth2.token_url".to_string(), r))?;
            }
        }
        if let Some(email) = sub.email() {
            self.check_host(&email.smtp.host, email.smtp.port)
                .map_err(|r| ("email.smtp.host".to_string(), r))?;
        }
        Ok(())
    }

    /// Why an SMTP server at `host:port` may not be registered: the same rules as a URL's.
    pub fn check_host(&self, host: &str, port: u16) -> Result<(), String> {
        let bracketed = if host.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let url = Url::parse(&format!("http://{bracketed}:{port}/"))
            .map_err(|e| format!("{host:?} is not a host name or address: {e}"))?;
        self.check_url(&url)
    }

    /// True when `host` is named by the allow-list.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed.iter().any(|a| match a {
            Allowed::Host(h) => *h == host,
            Allowed::Suffix(s) => host.ends_with(s.as_str()),
            Allowed::Net(_) => false,
        })
    }

    /// Why `ip` may not be reached; `named` says its host name is on the allow-list.
    fn check_ip(&self, ip: IpAddr, named: bool) -> Result<(), String> {
        let ip = canonical(ip);
        if self
            .allowed
            .iter()
            .any(|a| matches!(a, Allowed::Net(n) if n.contains(&ip)))
        {
            return Ok(());
        }
        if self.refused.iter().any(|n| n.contains(&ip)) {
            return Err(format!(
                "{ip} is a link-local or cloud metadata address; list it in api.allowed_destinations to allow it"
            ));
        }
        if !self.allowed.is_empty() && !named {
            return Err(format!("{ip} is not in api.allowed_destinations"));
        }
        Ok(())
    }
}

/// Folds IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) to IPv4, so one rule covers both.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Why a delivery may not connect to the relay itself: the reason its attempts fail with.
pub const OWN_LISTENER: &str = "destination is one of the relay's own listeners";

/// Which rules the addresses of a delivery's destination must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Config subscriptions, trusted otherwise: only the relay's own listeners are refused.
    OwnListeners,
    /// API subscriptions: the whole guard (allow-list, refused networks, own listeners).
    Guarded,
}

impl DestinationGuard {
    /// True when `ip:port` is one of the relay's listeners. A listener on an unspecified
    /// address is reached through loopback and through addresses of this host that the relay
    /// does not list; with `wide` (API subscriptions) any address on its port counts.
    pub fn is_own(&self, ip: IpAddr, port: u16, wide: bool) -> bool {
        let ip = canonical(ip);
        self.own.iter().any(|l| {
            l.port() == port
                && (canonical(l.ip()) == ip
                    || (ip.is_loopback() && (l.ip().is_loopback() || l.ip().is_unspecified()))
                    || ip.is_unspecified()
                    || (wide && l.ip().is_unspecified()))
        })
    }

    /// The addresses of `host` (`found`) a delivery under `policy` may connect to; `port`
    /// is the destination's (`None` behind a proxy, which resolves the destination itself).
    pub fn reachable(
        &self,
        host: &str,
        found: impl IntoIterator<Item = SocketAddr>,
        port: Option<u16>,
        policy: Policy,
    ) -> Result<Vec<SocketAddr>, String> {
        let named = self.host_allowed(host);
        let (mut own, mut refused, mut any) = (None, None, false);
        let kept: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| {
                any = true;
                let wide = policy == Policy::Guarded;
                if port.is_some_and(|p| self.is_own(a.ip(), p, wide)) {
                    own = Some(a.ip());
                    return false;
                }
                if wide && let Err(reason) = self.check_ip(a.ip(), named) {
                    refused = Some(reason);
                    return false;
                }
                true
            })
            .collect();
        match (kept.is_empty(), own, refused) {
            (false, _, _) => Ok(kept),
            (true, Some(ip), _) => Err(format!("{OWN_LISTENER} ({host} resolves to {ip})")),
            (true, None, Some(reason)) => Err(format!("destination refused: {host}: {reason}")),
            (true, None, None) if any => Err(format!("{host} has no usable address")),
            (true, None, None) => Err(format!("{host} has no address")),
        }
    }
}

/// Resolves delivery destinations: names in `delivery.hosts` to their address, others
/// through the system resolver (off the async threads).
#[derive(Debug, Clone)]
pub struct Lookup {
    guard: Arc<DestinationGuard>,
    hosts: Arc<BTreeMap<String, IpAddr>>,
}

impl Lookup {
    /// A lookup checking against `guard`, with `hosts` (lowercase names) taking precedence.
    pub fn new(guard: Arc<DestinationGuard>, hosts: BTreeMap<String, IpAddr>) -> Lookup {
        Lookup {
            guard,
            hosts: Arc::new(hosts),
        }
    }

    /// The guard the addresses are checked against.
    pub fn guard(&self) -> &Arc<DestinationGuard> {
        &self.guard
    }

    /// The addresses `host` resolves to, with `port`.
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ip) = self.hosts.get(&name) {
            return Ok(vec![SocketAddr::new(*ip, port)]);
        }
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }

    /// The addresses of `host` a delivery under `policy` may connect to (see
    /// [`DestinationGuard::reachable`]).
    pub async fn reachable(
        &self,
        host: &str,
        port: Option<u16>,
        policy: Policy,
    ) -> Result<Vec<SocketAddr>, BoxError> {
        let found = self
            .resolve(host, port.unwrap_or(0))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        Ok(self.guard.reachable(host, found, port, policy)?)
    }
}

/// The DNS resolver of a delivery client: [`Lookup::reachable`] for one policy and
/// destination port, so refused addresses are never connected to, at every connection.
#[derive(Debug, Clone)]
pub struct DeliveryResolver {
    /// Names and checks.
    pub lookup: Lookup,
    /// The rules that apply.
    pub policy: Policy,
    /// The destination port (`None` behind a proxy).
    pub port: Option<u16>,
}

impl Resolve for DeliveryResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let host = name.as_str();
            let mut found = this.lookup.reachable(host, this.port, this.policy).await?;
            // Port 0: reqwest puts the URL's port in (the lookup ran with the same one).
            found.iter_mut().for_each(|a| a.set_port(0));
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}

/// True when `url`'s host is an address (or `localhost`) of one of the relay's listeners on
/// its port; names are checked when resolved. `wide` as in [`DestinationGuard::is_own`].
pub fn literal_targets_listener(url: &Url, guard: &DestinationGuard, wide: bool) -> bool {
    let Some(port) = url.port_or_known_default() else {
        return false;
    };
    literal_ip(url).is_some_and(|ip| guard.is_own(ip, port, wide))
}

/// The address `url`'s host names without DNS: an IP literal, or loopback for `localhost`,
/// `localhost.` and `*.localhost` (RFC 6761).
fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(ip.into()),
        url::Host::Ipv6(ip) => Some(canonical(ip.into())),
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            (d == "localhost" || d.ends_with(".localhost")).then(|| IpAddr::from([127, 0, 0, 1]))
        }
    }
}

/// True when `url` would reach one of the relay's own listeners (`own`).
pub fn targets_listener(url: &Url, own: &[SocketAddr]) -> bool {
    let guard = DestinationGuard {
        allowed: Vec::new(),
        refused: Vec::new(),
        own: own.to_vec(),
    };
    literal_targets_listener(url, &guard, true)
}

#[cfg(test)]
const MAPPED_METADATA: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xa9fe, 0xa9fe);

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> &'static [SocketAddr] {
        static OWN: std::sync::LazyLock<[SocketAddr; 3]> = std::sync::LazyLock::new(|| {
            [
                "127.0.0.1:8787".parse().unwrap(),
                "127.0.0.1:8788".parse().unwrap(),
                "0.0.0.0:9464".parse().unwrap(),
            ]
        });
        &*OWN
    }

    fn check(guard: &DestinationGuard, url: &str) -> Result<(), String> {
        guard.check_url(&Url::parse(url).unwrap())
    }

    #[test]
    fn metadata_and_link_local_are_refused_in_every_form() {
        let g = DestinationGuard::new(Vec::new(), listen());
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.1.1:8080/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let e = check(&g, url).unwrap_err();
            assert!(e.contains("link-local or cloud metadata"), "{url}: {e}");
        }
        assert!(g.check_ip(IpAddr::V6(MAPPED_METADATA), true).is_err());
        assert!(check(&g, "https://hooks.example.com/x").is_ok());
        assert!(check(&g, "http://10.0.0.5:9000/").is_ok());
    }

    #[test]
    fn own_listeners_are_refused() {
        let g = DestinationGuard::new(Vec::new(), listen());
        for url in [
            "http://127.0.0.1:8787/v1/events",
            "http://localhost:8788/",
            "http://LocalHost.:8788/",
            "http://a.localhost:8787/",
            "http://[::ffff:127.0.0.1]:8787/",
            "http://[::1]:8787/",
            "http://2130706433:8787/",
            "http://10.1.2.3:9464/",
        ] {
            assert!(
                check(&g, url).unwrap_err().contains("own listeners"),
                "{url}"
            );
        }
        assert!(check(&g, "http://127.0.0.1:9000/").is_ok());
    }

    #[test]
    fn allow_list_limits_hosts_and_networks() {
        let allowed = [
            "hooks.example.com",
            "*.partner.io",
            "10.0.0.0/8",
            "169.254.10.1",
        ]
        .iter()
        .map(|a| Allowed::parse(a).unwrap())
        .collect();
        let g = DestinationGuard::new(allowed, listen());
        assert!(check(&g, "https://HOOKS.example.com/").is_ok());
        assert!(check(&g, "https://a.b.partner.io/").is_ok());
        assert!(check(&g, "http://10.2.3.4/").is_ok());
        // Explicitly allowed, although link-local.
        assert!(check(&g, "http://169.254.10.1/").is_ok());
        assert!(check(&g, "http://192.168.1.1/").is_err());
        assert!(check(&g, "http://169.254.169.254/").is_err());
        // A name outside the list may resolve into 10/8; each resolution decides.
        assert!(check(&g, "https://other.example.org/").is_ok());
        assert!(g.check_ip("10.9.9.9".parse().unwrap(), false).is_ok());
        assert!(g.check_ip("8.8.8.8".parse().unwrap(), false).is_err());
        assert!(g.check_ip("8.8.8.8".parse().unwrap(), true).is_ok());

        let hosts_only =
            DestinationGuard::new(vec![Allowed::parse("a.example").unwrap()], listen());
        assert!(check(&hosts_only, "https://b.example/").is_err());
    }

    #[test]
    fn smtp_hosts_follow_the_url_rules() {
        let g = DestinationGuard::new(Vec::new(), listen());
        assert!(g.check_host("169.254.169.254", 25).is_err());
        assert!(g.check_host("fe80::1", 587).is_err(), "IPv6 literal");
        assert!(g.check_host("127.0.0.1", 8787).is_err(), "own listener");
        assert!(g.check_host("smtp.example.com", 587).is_ok());
        assert!(g.check_host("10.1.2.3", 25).is_ok());
        let g = DestinationGuard::new(vec![Allowed::parse("10.0.0.0/8").unwrap()], listen());
        assert!(g.check_host("192.168.1.1", 25).is_err());
        let found: Vec<SocketAddr> = vec![
            "169.254.169.254:25".parse().unwrap(),
            "192.168.1.1:25".parse().unwrap(),
            "10.0.0.7:25".parse().unwrap(),
        ];
        let api = |found: &[SocketAddr]| {
            g.reachable(
                "mail.example.com",
                found.to_vec(),
                Some(25),
                Policy::Guarded,
            )
        };
        assert_eq!(api(&found), Ok(vec!["10.0.0.7:25".parse().unwrap()]));
        assert!(
            api(&found[..2])
                .unwrap_err()
                .contains("destination refused")
        );
        // Config subscriptions are trusted: only own listeners are dropped.
        assert_eq!(
            g.reachable("m", found.clone(), Some(25), Policy::OwnListeners),
            Ok(found)
        );
    }

    #[test]
    fn allow_list_entries_parse() {
        assert_eq!(
            Allowed::parse("*.Example.com"),
            Some(Allowed::Suffix(".example.com".into()))
        );
        assert!(matches!(Allowed::parse("fd00::/8"), Some(Allowed::Net(_))));
        assert_eq!(Allowed::parse("bad host"), None);
        assert_eq!(Allowed::parse("http://x/"), None);
    }

    #[test]
    fn own_listeners_are_dropped_from_resolved_addresses_for_every_policy() {
        let g = DestinationGuard::new(Vec::new(), listen());
        let at = |a: &str| -> SocketAddr { a.parse().unwrap() };
        for policy in [Policy::OwnListeners, Policy::Guarded] {
            for own in [
                "127.0.0.1:0",
                "127.9.9.9:0",
                "[::1]:0",
                "[::ffff:127.0.0.1]:0",
                "0.0.0.0:0",
            ] {
                let e = g
                    .reachable("loop.test", [at(own)], Some(8787), policy)
                    .unwrap_err();
                assert!(e.starts_with(OWN_LISTENER), "{own}: {e}");
                assert!(e.contains("loop.test"), "{e}");
            }
            // Another port of the same host is someone else (a receiver beside the relay).
            assert!(
                g.reachable("r", [at("127.0.0.1:0")], Some(9000), policy)
                    .is_ok()
            );
            // Mixed answers keep the other addresses.
            assert_eq!(
                g.reachable(
                    "m",
                    [at("127.0.0.1:0"), at("10.0.0.1:0")],
                    Some(8787),
                    policy
                ),
                Ok(vec![at("10.0.0.1:0")])
            );
            // Behind a proxy the port is unknown here: nothing is dropped as own.
            assert!(g.reachable("p", [at("127.0.0.1:0")], None, policy).is_ok());
        }
        // A listener on 0.0.0.0:9464 is any local address; only API subscriptions assume
        // every address on that port is this host.
        assert!(g.is_own("10.1.2.3".parse().unwrap(), 9464, true));
        assert!(!g.is_own("10.1.2.3".parse().unwrap(), 9464, false));
        assert!(g.is_own("127.0.0.1".parse().unwrap(), 9464, false));
        assert!(
            g.reachable("x", Vec::new(), Some(1), Policy::Guarded)
                .unwrap_err()
                .contains("no address")
        );
    }

    #[tokio::test]
    async fn resolver_applies_hosts_and_drops_refused_addresses() {
        let g = Arc::new(DestinationGuard::new(
            vec![Allowed::parse("10.0.0.0/8").unwrap()],
            listen(),
        ));
        let hosts = BTreeMap::from([
            (
                "loop.hookrelay.test".to_string(),
                IpAddr::from([127, 0, 0, 1]),
            ),
            ("pinned.test".to_string(), IpAddr::from([10, 1, 1, 1])),
        ]);
        let resolver = |policy, port| DeliveryResolver {
            lookup: Lookup::new(g.clone(), hosts.clone()),
            policy,
            port: Some(port),
        };
        let err = |r: Resolving| async {
            match r.await {
                Err(e) => e.to_string(),
                Ok(_) => panic!("resolved"),
            }
        };
        // localhost resolves to loopback, which the allow-list does not include.
        let e = err(resolver(Policy::Guarded, 80).resolve("localhost".parse().unwrap())).await;
        assert!(e.contains("destination refused"), "{e}");
        // A name mapped to the relay's own app port, under either policy; case and a final
        // dot do not matter.
        for policy in [Policy::OwnListeners, Policy::Guarded] {
            let r = resolver(policy, 8787);
            let e = err(r.resolve("Loop.Hookrelay.Test.".parse().unwrap())).await;
            assert!(e.contains(OWN_LISTENER), "{e}");
        }
        let found: Vec<SocketAddr> = resolver(Policy::Guarded, 443)
            .resolve("pinned.test".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(found, vec!["10.1.1.1:0".parse().unwrap()]);
        let ok = resolver(Policy::OwnListeners, 9000)
            .resolve("loop.hookrelay.test".parse().unwrap())
            .await;
        assert!(ok.is_ok());
    }
}
