//! hookrelay: a webhook relay that runs as a sidecar next to an application.
//!
//! A tour along the data path (ARCHITECTURE.md has the picture and the import layers):
//! - [`config`] reads the YAML (typed reads from [`yaml`]), expands `${VAR}` inside scalars
//!   and validates it whole; [`subscription`] holds each validated subscription, its compiled
//!   [`filter`] and its channel (HTTP, e-mail or pull).
//! - [`ingest`] serves `POST /v1/events` on the app listener: [`event`] parses the envelope
//!   (or takes a raw event's body as is); the [`catalog`]'s matcher ([`matching`]) yields each
//!   matched subscription's dispatch lane; the [`store`] commits the event and one delivery
//!   per match before the app gets `202`, and then each delivery is handed over to its lane.
//! - [`dispatch`] runs a feeder and a pump per push subscription: the feeder claims due
//!   deliveries from the store, the pump sends each attempt through the subscription's
//!   [`deliver`] stack (rate limit, concurrency caps, classification into a verdict, timeout,
//!   the HTTP or SMTP transport) and records its outcome; [`backoff`] spaces retries, which
//!   the store schedules, and [`signing`] signs HTTP attempts (Standard Webhooks).
//! - [`catalog`] holds the subscriptions in force, from the config and the [`api`], and swaps
//!   the matcher; [`reload`] re-reads the config file on SIGHUP or change.
//! - [`inbound`] is the HTTP edge the three listeners share (the accept loop with its
//!   connection limits, error shape, body helpers, bearer check, request limits); [`ops`] serves the probes and the Prometheus
//!   [`metrics`]; [`server`] wires it all to bound listeners and a shutdown future.
//!   [`time`], [`secret`], [`pem`], [`media_type`], [`json_depth`] and [`memory`] are
//!   shared leaves.
//! - [`cli`] is the operator CLI (`hookrelay subscriptions list`...): a client of the HTTP
//!   API that imports nothing of the relay.

pub mod api;
pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod deliver;

pub mod dispatch;

pub mod event;
pub mod filter;
pub mod inbound;
pub mod ingest;
pub mod json_depth;
pub mod matching;
pub mod media_type;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod pem;

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
