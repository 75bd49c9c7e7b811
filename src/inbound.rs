//! The inbound HTTP edge that every listener shares: the one error shape ([`error`]), how
//! handlers read request bodies ([`body`]), the bearer check ([`auth`]) and the `limits`
//! section that bounds every request ([`limits`]). A leaf: it imports no stage of the
//! relay, only the shared leaves (`secret`, `media_type`, `yaml`).

pub mod auth;
pub mod body;
pub mod error;
pub mod limits;
