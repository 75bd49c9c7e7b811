//! The inbound HTTP edge that every listener shares: the one error shape ([`error`]), how
//! handlers read request bodies ([`body`]) and the bearer check ([`auth`]). A leaf: it
//! imports no stage of the relay.

pub mod auth;
pub mod body;
pub mod error;
pub mod limits;
