//! Agents as omnigent users write them (reference wire notes, "Agent specs"): the spec ([`spec`]) and the
//! `.tar.gz` bundle that carries it with its files ([`bundle`]).
//!
//! Both cross process boundaries: the CLI packs and uploads a bundle, the server validates and stores it, the
//! runner fetches, unpacks and reads it. Each side uses these functions, so they cannot disagree about what a
//! spec means or what a bundle may contain.
//!
//! Where each step happens:
//! - upload (server): [`bundle::inspect`] (caps, hostile entries) then [`spec::AgentSpec::validate`] against the
//!   bundle's file list, so a spec that cannot run is refused with its field path;
//! - run (runner): [`bundle::unpack`] into the session's directory, [`spec::AgentSpec::load`], then
//!   [`spec::AgentSpec::interpolate`] with the runner's own environment (never on the server).

pub mod bundle;
pub mod spec;

/// The spec's file name at the root of a bundle (and in an agent directory).
pub const SPEC_FILE: &str = "config.yaml";
