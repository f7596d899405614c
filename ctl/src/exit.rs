//! Exit codes (documented in README.md): 0 ok, 1 failure, 2 usage (clap), 78 configuration error.

use std::process::ExitCode;

/// Exit code for a configuration error (EX_CONFIG): wrong flags values, unusable files, refused settings,
/// or a peer that can never be talked to (protocol mismatch, rejected token).
pub const EXIT_CONFIG: u8 = omnigent_proto::exit::CONFIG;

/// An error that must end the process with [`EXIT_CONFIG`] instead of 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Print `err` with its causes on stderr and pick the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if err.downcast_ref::<ConfigError>().is_some() {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::from(omnigent_proto::exit::FAILURE)
    }
}
