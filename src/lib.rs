//! hookrelay: a webhook relay that runs as a sidecar next to an application.
//!
//! A tour along the data path:
//! - [`config`] reads the YAML, expands `${VAR}` inside scalars and validates it whole;
//!   [`subscription`] and [`filter`] hold the validated subscription and its compiled filter.
//! - [`ingest`] serves `POST /v1/events` on the app listener: [`event`] parses the envelope
//!   (or takes the body of a raw event as is), the [`subscription::Registry`] matches it
//!   through its type index, and the [`store`] keeps it before the app gets `202`.
//! - [`dispatch`] runs one pump per subscription that claims due deliveries from the store;
//!   [`deliver`] sends each attempt through the subscription's tower stack (rate limit,
//!   concurrency, classification and metrics, timeout, auth), with the body [`payload`]
//!   encodes, and [`backoff`] spaces retries, which the store schedules.
//! - [`catalog`] holds the subscriptions in force (config and API) and swaps the registry;
//!   [`reload`] re-reads the config file on SIGHUP or change and swaps its subscriptions in.
//! - [`inbound`] is the HTTP edge the three listeners share: the one error shape, how
//!   request bodies are read, the bearer check and the request `limits`.
//! - [`metrics`] and [`ops`] serve Prometheus metrics and the probes; [`server`] wires it all
//!   to bound listeners and a shutdown future.

pub mod api;
pub mod backoff;
pub mod catalog;
pub mod config;
pub mod deliver;

pub mod dispatch;

pub mod event;
pub mod filter;
pub mod inbound;
pub mod ingest;
pub mod matching;
pub mod media_type;
pub mod metrics;
pub mod ops;

pub mod reload;
pub mod secret;
pub mod server;
pub mod signing;
pub mod store;
pub mod subscription;
pub mod time;
pub mod yaml;

pub use config::Config;
pub use server::Relay;
