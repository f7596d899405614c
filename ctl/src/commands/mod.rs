//! One file per command family; each parses its arguments, calls the daemon crate (or runs a role) and
//! prints. Process mechanics (starting, stopping, killing the daemon) live in `omnigent_daemon`.

pub mod agents;
pub mod daemon;
pub mod host;
pub mod logs;
pub mod packaging;
pub mod pair;
pub mod run;
pub mod runner;
pub mod server;
pub mod service;
