//! Hosting: one host tunnel per target server ([`host_tunnel`]) and the set of targets ([`targets`]).

pub mod host_tunnel;
pub mod targets;
