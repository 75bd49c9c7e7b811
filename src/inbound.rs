//! The inbound HTTP edge that every listener shares: the one error shape ([`error`]) and
//! how handlers read request bodies ([`body`]). A leaf: it imports no stage of the relay.

pub mod body;
pub mod error;
