//! Where subscriptions registered over the API may deliver. Anyone holding the API token can
//! name a URL, so link-local and cloud metadata addresses and the relay's own listeners are
//! refused (unless `api.allowed_destinations` names them), and when an allow-list is set only
//! its hosts and networks are reachable. URLs are checked when registered; names are checked
//! again after every DNS resolution, so a name cannot later be pointed somewhere refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::subscription::Subscription;

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
        if targets_listener(url, &self.own) {
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

    /// The first of `host`'s resolved addresses the guard allows.
    pub fn first_allowed(
        &self,
        host: &str,
        found: impl IntoIterator<Item = SocketAddr>,
    ) -> Option<SocketAddr> {
        self.permitted(host, found).into_iter().next()
    }

    /// The addresses `host` resolved to that may be reached.
    fn permitted(
        &self,
        host: &str,
        found: impl IntoIterator<Item = SocketAddr>,
    ) -> Vec<SocketAddr> {
        let named = self.host_allowed(host);
        found
            .into_iter()
            .filter(|a| self.check_ip(a.ip(), named).is_ok())
            .collect()
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

/// A DNS resolver that drops refused addresses, for the client of API subscriptions.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Arc<DestinationGuard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let permitted = guard.permitted(&host, found);
            if permitted.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> = format!(
                    "destination refused: {host} resolves only to addresses api.allowed_destinations does not allow"
                )
                .into();
                return Err(refused);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// `::ffff:169.254.169.254`, the metadata address in IPv4-mapped form.
/// True when `url` would reach one of the relay's own listeners.
pub fn targets_listener(url: &Url, own: &[SocketAddr]) -> bool {
    let Some(port) = url.port_or_known_default() else {
        return false;
    };
    let host_ip: Option<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(ip.into()),
        // `::ffff:127.0.0.1` is loopback too.
        Some(url::Host::Ipv6(ip)) => Some(ip.to_ipv4_mapped().map_or(ip.into(), IpAddr::V4)),
        // `localhost`, `localhost.` and `*.localhost` all resolve to loopback (RFC 6761).
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            (d == "localhost" || d.ends_with(".localhost")).then(|| IpAddr::from([127, 0, 0, 1]))
        }
        None => None,
    };
    let Some(host_ip) = host_ip else {
        return false;
    };
    own.iter().any(|l| {
        l.port() == port
            && (l.ip() == host_ip
                || (host_ip.is_loopback() && (l.ip().is_loopback() || l.ip().is_unspecified()))
                || host_ip.is_unspecified()
                || l.ip().is_unspecified())
    })
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
        assert_eq!(
            g.first_allowed("mail.example.com", found.clone()),
            Some("10.0.0.7:25".parse().unwrap())
        );
        assert_eq!(
            g.first_allowed("mail.example.com", found[..2].to_vec()),
            None
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

    #[tokio::test]
    async fn resolver_drops_refused_addresses() {
        let g = Arc::new(DestinationGuard::new(
            vec![Allowed::parse("10.0.0.0/8").unwrap()],
            listen(),
        ));
        let resolver = GuardedResolver(g);
        // localhost resolves to loopback, which the allow-list does not include.
        let err = match resolver.resolve("localhost".parse().unwrap()).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loopback passed an allow-list of 10/8"),
        };
        assert!(err.contains("destination refused"), "{err}");
        let open = GuardedResolver(Arc::new(DestinationGuard::new(Vec::new(), listen())));
        assert!(open.resolve("localhost".parse().unwrap()).await.is_ok());
    }
}
