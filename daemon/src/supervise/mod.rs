//! Supervision of the daemon's children: one supervised-child type ([`child`]) behind the local server
//! ([`local_server`]) and the runners ([`runners`]); process groups and signals ([`process`]), the subreaper
//! for orphans ([`reaper`]), the restart rules ([`backoff`]), and every task the daemon spawns ([`tasks`]).

pub mod backoff;
pub mod child;
pub mod cli_probe;
pub mod local_server;
pub mod process;
pub mod reaper;
pub mod runners;
pub mod tasks;
