//! Configuration: YAML parsed into a tree, `${VAR}` expanded inside scalars, then validated
//! whole into the types the relay runs on. Every problem is reported at once, with its path.
//! Each stage owns its section's type and parser; this file reads the process's own sections
//! (listen, log, shutdown, release, reload) and assembles the rest.

pub mod env;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use crate::api::settings::ApiSettings;
use crate::deliver::destination::targets_listener;
use crate::deliver::settings::DeliverySettings;
use crate::inbound::limits::Limits;
use crate::ingest::settings::IngestSettings;
use crate::store::settings::StorageSettings;
use crate::subscription::{Files, Subscription, push_slots};
use crate::yaml::{Issue, Issues, Positions, Section, as_list, as_string, index};

/// Top-level keys.
const KEYS: &[&str] = &[
    "listen",
    "log",
    "limits",
    "ingest",
    "api",
    "delivery",
    "shutdown",
    "storage",
    "release",
    "reload",
    "subscriptions",
];

/// Default listener addresses: `app` (events in), `api` (management), `ops` (metrics, probes).
pub const DEFAULT_LISTEN: [(&str, &str); 3] = [
    ("app", "127.0.0.1:8787"),
    ("api", "127.0.0.1:8788"),
    ("ops", "0.0.0.0:9464"),
];

/// The listeners, the ways to name the config file and where the docs are, for `--help`.
pub fn help_text() -> String {
    let what = [
        "events from the app (POST /v1/events)",
        "management API (/v1/subscriptions, /v1/deliveries)",
        "metrics and probes (/metrics, /healthz, /readyz)",
    ];
    let mut text = String::from("Listeners (defaults; change them under listen: in the config):\n");
    for ((name, addr), what) in DEFAULT_LISTEN.iter().zip(what) {
        text.push_str(&format!("  {name:<4} {addr:<15} {what}\n"));
    }
    text.push_str(
        "\nConfiguration: --config PATH or the HOOKRELAY_CONFIG environment variable (no default\n\
         path); `hookrelay check --config PATH` validates a file and exits.\n\
         \nDocumentation, in the repository:\n  \
         docs/configuration.md  every key, its default and allowed values\n  \
         docs/operations.md     running, metrics, probes, logs\n  \
         docs/api.md            the HTTP routes",
    );
    text
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to bind.
    pub listen: Listen,
    /// Logging.
    pub log: Log,
    /// Inbound request limits.
    pub limits: Limits,
    /// Ingest authentication.
    pub ingest: IngestSettings,
    /// Management API settings.
    pub api: ApiSettings,
    /// Outbound settings shared by all subscriptions.
    pub delivery: DeliverySettings,
    /// How long in-flight attempts may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Where the queue lives.
    pub storage: StorageSettings,
    /// Shortest interval between two releases of the same scope.
    pub release_min_interval: Duration,
    /// Config file reloading.
    pub reload: Reload,
    /// Declared subscriptions.
    pub subscriptions: Vec<Subscription>,
    /// A digest of the source text, so a reload can tell whether the file really changed.
    pub source_digest: u64,
}

/// Config file reloading (SIGHUP always reloads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reload {
    /// Watch the file (and its directory, for ConfigMap symlink swaps) and reload on change.
    pub watch: bool,
}

/// Listener addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// Event ingest (the app's side).
    pub app: SocketAddr,
    /// Management API.
    pub api: SocketAddr,
    /// Metrics and probes.
    pub ops: SocketAddr,
}

impl Listen {
    /// The three addresses, for the checks that keep deliveries off the relay's own ports.
    pub fn addrs(&self) -> [SocketAddr; 3] {
        [self.app, self.api, self.ops]
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// An `EnvFilter` directive such as `info` or `hookrelay=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// YAML syntax error.
    #[error("{origin}:{line}:{column}: {message}")]
    Syntax {
        /// File name.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_yaml's message.
        message: String,
    },
    /// Structurally valid YAML with invalid content (or repeated keys): every issue found.
    #[error("{origin}: {} problem(s):\n{}", .issues.len(), .issues.iter().map(|i| format!("  {}", located(origin, i))).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// File name.
        origin: String,
        /// Every problem, each with its path and, where known, its position.
        issues: Vec<Issue>,
    },
}

impl ConfigError {
    /// One line per problem, each with its `FILE:LINE:COLUMN` where known.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { origin, issues } => {
                issues.iter().map(|i| located(origin, i)).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// `FILE:LINE:COLUMN: path: reason`, as compilers write it, so editors can jump there.
fn located(origin: &str, issue: &Issue) -> String {
    match issue.position {
        Some(p) => format!("{origin}:{p}: {issue}"),
        None => format!("{origin}: {issue}"),
    }
}

impl Config {
    /// Reads and validates a configuration file, expanding variables from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // Files the config names (TLS material) are relative to its directory.
        let files = Files {
            base: path.parent(),
            allowed: true,
        };
        Config::from_yaml_in(&text, &path.display().to_string(), &files, &|name| {
            std::env::var(name).ok()
        })
    }

    /// Validates a configuration document; `origin` names it in messages, and the files it
    /// names resolve against the working directory.
    pub fn from_yaml(
        text: &str,
        origin: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::from_yaml_in(text, origin, &Files::CONFIG, lookup)
    }

    /// [`Config::from_yaml`] with the files it names resolved as `files` says.
    pub fn from_yaml_in(
        text: &str,
        origin: &str,
        files: &Files<'_>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // `None` when the event reader refuses the text: serde_yaml then reports the syntax.
        let positions = Positions::read(text).ok();
        let mut tree: Value = match serde_yaml::from_str(text) {
            Ok(tree) => tree,
            // serde_yaml stops at the first repeated key; the positions list each at its line.
            Err(_)
                if positions
                    .as_ref()
                    .is_some_and(|p| !p.duplicates().is_empty()) =>
            {
                return Err(ConfigError::Invalid {
                    origin: origin.to_string(),
                    issues: positions
                        .map(|p| p.duplicates().to_vec())
                        .unwrap_or_default(),
                });
            }
            Err(e) => {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((0, 0));
                return Err(ConfigError::Syntax {
                    origin: origin.to_string(),
                    line,
                    column,
                    message: e.to_string(),
                });
            }
        };
        let mut issues = Issues::default();
        if matches!(tree, Value::Null) {
            tree = Value::Mapping(Default::default());
        }
        env::expand_tree(&mut tree, "", lookup, &mut issues);
        let mut config = Config::validate(&tree, files, &mut issues);
        if let Some(c) = config.as_mut() {
            use std::hash::{Hash, Hasher};
            let mut digest = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut digest);
            // A rotated certificate file changes the config under the same text.
            for tls in c
                .subscriptions
                .iter()
                .filter_map(|s| s.http()?.tls.as_ref())
            {
                tls.digest.hash(&mut digest);
            }
            c.source_digest = digest.finish();
        }
        match config {
            Some(c) if issues.is_empty() => Ok(c),
            _ => Err(ConfigError::Invalid {
                origin: origin.to_string(),
                issues: match &positions {
                    Some(p) => {
                        let mut placed: Vec<Issue> =
                            issues.0.into_iter().map(|i| p.place(i)).collect();
                        // In the file's order, as a reader fixes them (stable: ties keep theirs).
                        placed.sort_by_key(|i| i.position.map(|p| (p.line, p.column)));
                        placed
                    }
                    None => issues.0,
                },
            }),
        }
    }

    /// The files besides the config file whose change changes the config (TLS material).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .subscriptions
            .iter()
            .filter_map(|s| s.http()?.tls.as_ref())
            .flat_map(|t| t.sources.files().cloned())
            .collect();
        files.sort();
        files.dedup();
        files
    }

    fn validate(tree: &Value, files: &Files<'_>, issues: &mut Issues) -> Option<Config> {
        let root = Section::new(Some(tree), "", KEYS, issues);
        if !matches!(tree, Value::Mapping(_)) {
            return None;
        }

        let l = root.section("listen", &["app", "api", "ops"], issues);
        let addr = |key: &str, default: &str, issues: &mut Issues| -> SocketAddr {
            let text = l.string(key, issues).unwrap_or_else(|| default.to_string());
            text.parse().unwrap_or_else(|_| {
                issues.push(
                    &l.at(key),
                    format!("{text:?} is not an IP:port address such as 127.0.0.1:8787"),
                );
                default.parse().expect("valid default")
            })
        };
        let [(_, app), (_, api), (_, ops)] = DEFAULT_LISTEN;
        let listen = Listen {
            app: addr("app", app, issues),
            api: addr("api", api, issues),
            ops: addr("ops", ops, issues),
        };
        let ports: Vec<u16> = [listen.app, listen.api, listen.ops]
            .iter()
            .map(SocketAddr::port)
            .filter(|p| *p != 0)
            .collect();
        if ports.iter().collect::<HashSet<_>>().len() != ports.len() {
            issues.push("listen", "app, api and ops must use different ports");
        }

        let lg = root.section("log", &["level", "format"], issues);
        let level = lg
            .string("level", issues)
            .unwrap_or_else(|| "info".to_string());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            issues.push(
                &lg.at("level"),
                format!("{level:?} is not a log level or filter directive"),
            );
        }
        let format = match lg.string("format", issues).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                issues.push(&lg.at("format"), format!("{other:?} is not text or json"));
                LogFormat::Text
            }
        };

        let limits = Limits::parse(&root, issues);
        let ingest = IngestSettings::parse(&root, listen.app, issues);
        let api = ApiSettings::parse(&root, listen.api, issues);

        let delivery = DeliverySettings::parse(&root, issues);

        let sh = root.section("shutdown", &["grace"], issues);
        let shutdown_grace = sh.duration(
            "grace",
            Duration::ZERO..=Duration::from_secs(3600),
            Duration::from_secs(25),
            issues,
        );

        let storage = StorageSettings::parse(&root, issues);
        let rel = root.section("release", &["min_interval"], issues);
        let release_min_interval = rel.duration(
            "min_interval",
            Duration::ZERO..=Duration::from_secs(7 * 86_400),
            Duration::from_secs(3600),
            issues,
        );

        let rl = root.section("reload", &["watch"], issues);
        let reload = Reload {
            watch: rl.boolean("watch", true, issues),
        };

        let mut subscriptions = Vec::new();
        if let Some(v) = root.get("subscriptions")
            && let Some(items) = as_list(v, "subscriptions", issues)
        {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let path = index("subscriptions", i);
                let name = item
                    .get("name")
                    .and_then(|n| as_string(n, "", &mut Issues::default()));
                if let Some(n) = &name
                    && !seen.insert(n.clone())
                {
                    issues.push(
                        &format!("{path}.name"),
                        format!("{n:?} is used by an earlier subscription"),
                    );
                }
                if let Some(sub) = Subscription::parse(item, &path, files, issues) {
                    if sub
                        .http()
                        .is_some_and(|h| targets_listener(&h.url, &listen.addrs()))
                    {
                        issues.push(
                            &format!("{path}.url"),
                            "points at one of the relay's own listeners (a delivery loop)",
                        );
                    }
                    subscriptions.push(sub);
                }
            }
        }

        // Each config subscription is promised its own slots; API subscriptions share what
        // `api_max_in_flight` keeps beside them, so no receiver can take another's.
        let wanted = push_slots(&subscriptions);
        if wanted > delivery.max_in_flight_total {
            issues.push(
                "delivery.max_in_flight_total",
                format!(
                    "{} is below the sum of the subscriptions' max_in_flight ({wanted}); raise it or lower those",
                    delivery.max_in_flight_total
                ),
            );
        } else if let Some(api) = delivery.api_max_in_flight
            && wanted + api > delivery.max_in_flight_total
        {
            issues.push(
                "delivery.api_max_in_flight",
                format!(
                    "{api} and the config subscriptions' max_in_flight ({wanted}) add up to more than max_in_flight_total ({}); raise that or lower these",
                    delivery.max_in_flight_total
                ),
            );
        }

        Some(Config {
            listen,
            log: Log { level, format },
            limits,
            ingest,
            api,
            delivery,
            shutdown_grace,
            storage,
            release_min_interval,
            reload,
            subscriptions,
            source_digest: 0,
        })
    }

    /// The sections that differ in `new` and that only a restart applies (a reload swaps
    /// the subscriptions alone).
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |section: &'static str, same: bool| {
            if !same {
                changed.push(section);
            }
        };
        check("listen", self.listen == new.listen);
        check("log", self.log == new.log);
        check("limits", self.limits == new.limits);
        check("ingest", self.ingest == new.ingest);
        check("api", self.api == new.api);
        check("delivery", self.delivery == new.delivery);
        check("shutdown", self.shutdown_grace == new.shutdown_grace);
        check("storage", self.storage == new.storage);
        check(
            "release",
            self.release_min_interval == new.release_min_interval,
        );
        check("reload", self.reload == new.reload);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(yaml, "test.yaml", &|name| {
            (name == "SECRET").then(|| "s3cret".to_string())
        })
    }

    fn issues(yaml: &str) -> Vec<String> {
        match load(yaml) {
            Err(ConfigError::Invalid { issues, .. }) => {
                issues.iter().map(|i| i.to_string()).collect()
            }
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn a_reload_names_the_sections_only_a_restart_applies() {
        let load = |yaml: &str| Config::from_yaml(yaml, "t.yaml", &|_| None).unwrap();
        let base = load("subscriptions: [{name: a, url: 'http://10.0.0.1/', events: [x]}]");
        assert!(base.reload.watch, "watching is the default");
        let subs_only = load("subscriptions: [{name: b, url: 'http://10.0.0.2/', events: [y]}]");
        assert!(base.restart_needed(&subs_only).is_empty());
        assert_ne!(base.source_digest, subs_only.source_digest);
        let moved = load(
            "listen: {app: '127.0.0.1:9999'}\nstorage: {sync: normal}\nreload: {watch: false}\nsubscriptions: []",
        );
        assert_eq!(base.restart_needed(&moved), ["listen", "storage", "reload"]);
    }

    #[test]
    fn empty_config_has_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.listen.app, "127.0.0.1:8787".parse().unwrap());
        assert_eq!(c.listen.ops, "0.0.0.0:9464".parse().unwrap());
        assert_eq!(c.limits.max_body, 1024 * 1024);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(10));
        assert_eq!(c.delivery.max_in_flight_total, 512);
        assert_eq!(c.shutdown_grace, Duration::from_secs(25));
        assert!(c.subscriptions.is_empty());
    }

    #[test]
    fn listeners_off_loopback_need_tokens() {
        let found = issues("listen: {app: '0.0.0.0:8787', api: '10.0.0.1:8788'}");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("ingest.token: is required because listen.app (0.0.0.0:8787)")
        );
        assert!(found[1].starts_with("api.token: is required because listen.api (10.0.0.1:8788)"));
        let c = load(
            "listen: {app: '0.0.0.0:8787', api: '0.0.0.0:8788'}
ingest: {token: '${SECRET}'}
api: {token: '${SECRET}'}",
        )
        .unwrap();
        assert_eq!(c.api.token.unwrap().expose(), "s3cret");
        let found = issues(
            "listen: {app: '0.0.0.0:8787', api: '0.0.0.0:8788'}\napi: {allow_unauthenticated: true}",
        );
        assert_eq!(
            found.len(),
            1,
            "each listener has its own opt-out: {found:?}"
        );
        let c = load(
            "listen: {app: '0.0.0.0:8787', api: '0.0.0.0:8788'}
api: {allow_unauthenticated: true}
ingest: {allow_unauthenticated: true}",
        )
        .unwrap();
        assert!(c.api.token.is_none() && c.ingest.token.is_none());
    }

    #[test]
    fn api_section_is_validated() {
        let c = load("").unwrap();
        assert_eq!(c.api.max_subscriptions, 10_000);
        assert!(c.api.allowed_destinations.is_empty());
        let found = issues(
            "api: {token: '', max_subscriptions: -1, allowed_destinations: ['10.0.0.0/8', 'not a host'], colour: red}",
        );
        let expected = [
            "api.colour: unknown field",
            "api.token: must not be empty",
            "api.allowed_destinations[1]: \"not a host\" is not a host name",
            "api.max_subscriptions: -1 is out of range 0..=100000",
        ];
        for e in expected {
            assert!(
                found.iter().any(|f| f.starts_with(e)),
                "missing {e:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
    }

    #[test]
    fn problems_carry_the_position_of_their_value_or_key() {
        let err = load("listen:\n  app: nonsense\n  colour: red\nsubscriptions:\n  - {name: a}\n")
            .unwrap_err();
        let lines = err.problems();
        assert!(
            lines[0].starts_with("test.yaml:2:8: listen.app: \"nonsense\" is not"),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with("test.yaml:3:3: listen.colour: unknown field"),
            "{lines:#?}"
        );
        // A missing key is reported at the mapping that lacks it.
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("test.yaml:5:5: subscriptions[0].events: missing")),
            "{lines:#?}"
        );
        let repeated = load("log: {level: info, level: debug}\n").unwrap_err();
        assert_eq!(
            repeated.problems(),
            ["test.yaml:1:20: log.level: duplicate key (first at line 1)"]
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = load("listen:\n  app: [unclosed\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.yaml:"), "{text}");
        match err {
            ConfigError::Syntax { line, column, .. } => assert!(line >= 2 && column > 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn all_problems_reported_at_once() {
        let found = issues(
            "
listen: {app: 'nonsense', extra: 1}
log: {format: xml}
limits: {max_body: 10GiB}
shutdown: {grace: forever}
subscriptions:
  - {name: a, url: 'http://127.0.0.1:9000/', events: [x]}
  - {name: a, url: 'http://127.0.0.1:9000/', events: [x]}
  - {name: c, url: 'http://127.0.0.1:9000/', events: [x], retries: 42}
  - {name: d, url: '${MISSING}', events: [x]}
unknown_top: 1
",
        );
        let expected = [
            "unknown_top: unknown field",
            "listen.extra: unknown field",
            "listen.app: \"nonsense\" is not an IP:port address",
            "log.format: \"xml\" is not text or json",
            "limits.max_body: 10737418240 bytes is out of range",
            "shutdown.grace: expected a duration",
            "subscriptions[1].name: \"a\" is used by an earlier subscription",
            "subscriptions[2].retries: 42 is out of range 0..=20",
            "subscriptions[3].url: environment variable MISSING is not set",
        ];
        for e in expected {
            assert!(
                found.iter().any(|f| f.starts_with(e)),
                "missing {e:?} in {found:#?}"
            );
        }
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let c = load(
            "subscriptions:\n  - {name: a, url: 'http://10.0.0.1/', events: [x], auth: {bearer: '${SECRET}'}}\n",
        )
        .unwrap();
        match &c.subscriptions[0].http().unwrap().auth {
            Some(crate::subscription::Auth::Bearer(t)) => assert_eq!(t.expose(), "s3cret"),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn the_global_cap_covers_every_subscription() {
        let found = issues(
            "delivery: {max_in_flight_total: 10}\nsubscriptions:\n  - {name: a, url: 'http://10.0.0.1/', events: [x], max_in_flight: 8}\n  - {name: b, url: 'http://10.0.0.1/', events: [x], max_in_flight: 8}\n",
        );
        assert_eq!(
            found,
            [
                "delivery.max_in_flight_total: 10 is below the sum of the subscriptions' max_in_flight (16); raise it or lower those"
            ]
        );
    }

    #[test]
    fn proxy_credentials_are_refused() {
        let found = issues("delivery: {proxy: 'http://u:p@proxy:3128'}\n");
        assert_eq!(found, ["delivery.proxy: must not carry credentials"]);
    }

    #[test]
    fn delivery_loops_are_refused() {
        let found = issues(
            "listen: {app: '127.0.0.1:8787'}\nsubscriptions:\n  - {name: a, url: 'http://localhost:8787/v1/events', events: [x]}\n  - {name: b, url: 'http://127.0.0.1:9464/metrics', events: [x]}\n",
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0]
                .starts_with("subscriptions[0].url: points at one of the relay's own listeners")
        );
        assert!(
            load("subscriptions:\n  - {name: a, url: 'http://127.0.0.1:9000/', events: [x]}\n")
                .is_ok()
        );
    }

    /// Every host a subscription delivers to, the SMTP ones included.
    fn destinations(c: &Config) -> Vec<String> {
        use crate::subscription::Channel;
        c.subscriptions
            .iter()
            .filter_map(|s| match &s.channel {
                Channel::Http { http, .. } => http.url.host_str().map(str::to_string),
                Channel::Email { email, .. } => Some(email.smtp.host.clone()),
                Channel::Pull(_) => None,
            })
            .collect()
    }

    fn is_loopback(host: &str) -> bool {
        host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// The examples run as they stand, so they must never reach beyond this machine.
    #[test]
    fn the_examples_are_valid_and_only_talk_to_loopback() {
        for (name, text) in [
            (
                "config.example.yaml",
                include_str!("../config.example.yaml"),
            ),
            (
                "examples/minimal.yaml",
                include_str!("../examples/minimal.yaml"),
            ),
        ] {
            let c = Config::from_yaml(text, name, &|_| None).unwrap();
            assert!(!c.subscriptions.is_empty(), "{name}");
            assert!(c.delivery.proxy.is_none(), "{name}: a proxy");
            let away: Vec<_> = destinations(&c)
                .into_iter()
                .filter(|h| !is_loopback(h))
                .collect();
            assert!(away.is_empty(), "{name} delivers beyond loopback: {away:?}");
        }
    }

    #[test]
    fn the_minimal_example_is_short() {
        let lines = include_str!("../examples/minimal.yaml").lines().count();
        assert!(lines < 20, "examples/minimal.yaml has {lines} lines");
    }
}
