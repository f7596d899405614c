//! omnigent-proto: every type that crosses a process boundary, and every version constant, once.
//!
//! - [`api`] and [`events`]: the public HTTP API and SSE events (clients ⇄ server), omnigent-compatible.
//! - [`runner_frames`]: runner tunnel v1 frames (runner ⇄ server), omnigent-compatible.
//! - [`runner_api`]: bodies of the runner HTTP API the server drives (session init, turn event, errors).
//! - [`host_frames`]: host tunnel v1 frames (daemon ⇄ server), omnigent-compatible.
//! - [`live`]: what a live web client needs beyond sessions (the session-list WebSocket, read state,
//!   projects, catalogs, presence), omnigent-compatible.
//! - [`control`]: the local control API (CLI ⇄ daemon), ours.
//! - [`elicitation`]: approvals (an agent's permission prompt, its answer from any client).
//! - [`agent`]: agent specs (`config.yaml`) and the `.tar.gz` bundles that carry them (CLI → server → runner).
//! - [`harness`]: the harness table (names, aliases, credential variables), read by the daemon and the runner.
//! - [`exit`]: process exit codes.
//! - [`ids`]: id formats shared by all of them, and what a path id may look like.
//! - [`headers`]: header names and values shared by the processes (origin sentinel, token headers), and
//!   which headers carry secrets.
//! - [`paths`]: where each process finds the files the others write.
//!
//! This crate depends on no internal crate.

pub mod agent;
pub mod api;
pub mod auth;
pub mod control;
pub mod credentials;
pub mod elicitation;
pub mod events;
pub mod exit;
pub mod harness;
pub mod headers;
pub mod host_frames;
pub mod ids;
pub mod live;
pub mod paths;
pub mod runner_api;
pub mod runner_frames;

/// The build version of every omnigent-rs binary (what `host.hello.version` and the control hello carry).
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Frame protocol major spoken on the runner and host tunnels. Peers with another major are refused.
pub const FRAME_PROTOCOL_VERSION: u32 = 1;

/// Version of the local control API (CLI ⇄ daemon). Bump on any incompatible change.
pub const CONTROL_PROTOCOL_VERSION: u32 = 1;

/// Largest tunnel frame accepted once the peer's `hello` is accepted, checked before allocating (reference §3.5).
pub const MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// Largest tunnel frame accepted before the peer's `hello` is accepted (both tunnels): an unauthenticated peer
/// cannot make the server buffer more than this. A 0.19.1 `hello` is a few hundred bytes.
pub const MAX_PRE_HELLO_FRAME_BYTES: usize = 64 * 1024;
