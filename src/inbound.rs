//! The inbound HTTP edge that every listener shares: the accept loop that serves and times
//! connections ([`listener`]), the one error shape ([`error`]), how handlers read request
//! bodies ([`body`]), the bearer check ([`auth`]), the `limits` section that bounds every
//! connection and request ([`limits`]) and the count of answers by status ([`requests`]).
//! A leaf: it imports no stage of the relay, only the shared leaves (`secret`,
//! `media_type`, `yaml`).

pub mod auth;
pub mod body;
pub mod error;
pub mod limits;
pub mod listener;
pub mod requests;
