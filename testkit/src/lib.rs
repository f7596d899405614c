//! Fixtures shared by the workspace's tests and benchmarks (a dev-dependency only, never published):
//!
//! - [`net`]: axum apps served on `127.0.0.1:0`, reporting the address they got (no bind-drop-reuse port race);
//! - [`host`]: a fake coordination server's end of the host tunnel (`/v1/hosts/{id}/tunnel`, `/v1/me`), and a
//!   hand-played WebSocket route that gives each upgraded socket to the test;
//! - [`vendor`]: a scripted fake vendor API (OpenAI- or Anthropic-compatible streaming, by what is scripted),
//!   and [`vendor::responses`]: the chunks of an OpenAI Responses API stream;
//! - [`sse`]: a reader of one session stream, event by event, with ids, waiting for a predicate in time;
//! - [`process`]: the `omnigent` command with a temp `OMNIGENT_HOME`, and child guards that kill and reap;
//! - [`fs`]: a small tmpfs (root only) to fill up;
//! - [`ws`]: a raw WebSocket peer of a tunnel route (dial with given headers, hello, read the close code);
//! - [`agent_clis`]: where the real agent CLIs from npm (Claude Code, Codex, Pi) are installed for the tests.
//!
//! Every wait is bounded by [`WAIT`] (or a bound the caller gives): a signal that never comes fails the test
//! instead of hanging it. Nothing here sleeps to let something happen.
#![allow(clippy::unwrap_used)]

pub mod agent_clis;
pub mod fs;
pub mod host;
pub mod net;
pub mod process;
pub mod sse;
pub mod vendor;
pub mod ws;

use std::time::Duration;

pub use agent_clis::agent_cli;
pub use host::{FakeHost, RawWs, StoppedHost};
pub use net::{Served, serve};
pub use process::Proc;
pub use sse::Sse;
pub use vendor::{Canned, End, FakeVendor, Recorded, Step};

/// Bound on every wait for a signal; hitting it fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(30);

/// `future`, failing the test if it does not finish within `seconds`.
pub async fn within<F: std::future::Future>(seconds: u64, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(seconds), future)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {seconds} s"))
}
