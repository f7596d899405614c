//! Agents as omnigent users write them (reference wire notes, "Agent specs"): the spec ([`spec`]) and the
//! `.tar.gz` bundle that carries it with its files ([`bundle`]).
//!
//! Both cross process boundaries: the CLI packs and uploads a bundle, the server validates and stores it, the
//! runner fetches, unpacks and reads it. Each side uses these functions, so they cannot disagree about what a
//! spec means or what a bundle may contain.
//!
//! Where each step happens:
//! - upload (server): [`check_upload`], i.e. [`bundle::inspect`] (caps, hostile entries) then
//!   [`spec::AgentSpec::validate`] against the bundle's file list, so a spec that cannot run is refused with its
//!   field path;
//! - run (runner): [`bundle::unpack`] into the session's directory, [`spec::AgentSpec::load`], then
//!   [`spec::AgentSpec::interpolate`] with the runner's own environment (never on the server).

pub mod bundle;
pub mod spec;

use bundle::{Bundle, BundleError, Limits};
use spec::{AgentSpec, SpecError};

/// The spec's file name at the root of a bundle (and in an agent directory).
pub const SPEC_FILE: &str = "config.yaml";

/// Why an uploaded bundle was refused: the bundle itself, or the spec it carries.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// The server's whole upload check, writing nothing: the bundle under `limits`, then its `config.yaml` parsed
/// and validated against the bundle's own files. `${VAR}`s are left as written (they belong to the runner).
pub fn check_upload(bytes: &[u8], limits: &Limits) -> Result<(Bundle, AgentSpec), UploadError> {
    let bundle = bundle::inspect(bytes, limits)?;
    let spec = AgentSpec::parse(&bundle.spec_text)?;
    spec.validate(|rel| bundle.has_file(rel))?;
    Ok((bundle, spec))
}

/// A path inside an agent (a bundle entry, an instructions file) made canonical: `/`-separated, `.` and empty
/// parts dropped; an absolute path, `..`, backslashes, NULs and drive letters refused, with why. The root
/// itself is the empty string.
pub(crate) fn relative_path(path: &str) -> Result<String, &'static str> {
    if path.starts_with('/') {
        return Err("absolute paths are not allowed; paths are relative to the agent's directory");
    }
    if path.contains('\\') || path.contains('\0') {
        return Err("backslashes and NULs are not allowed in paths");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("`..` is not allowed: paths stay inside the agent's directory"),
            part if part.len() >= 2 && part.as_bytes()[1] == b':' => {
                return Err("drive-letter paths are not allowed");
            }
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}
