//! Exit codes (documented in docs/cli.md): 0 ok, 1 failure, 2 usage (clap), 78 configuration error, 130
//! interrupted (Ctrl-C), 141 stdout or stderr closed by its reader (as a filter killed by SIGPIPE reports).

use std::io::Write;
use std::process::ExitCode;

/// Exit code for a configuration error (EX_CONFIG): wrong flags values, unusable files, refused settings,
/// or a peer that can never be talked to (protocol mismatch, rejected token).
pub const EXIT_CONFIG: u8 = omnigent_proto::exit::CONFIG;
/// Exit code after Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = omnigent_proto::exit::INTERRUPTED;
/// Exit code when the reader of stdout or stderr went away (128 + SIGPIPE), e.g. `omnigent … | head -1`.
pub const EXIT_CLOSED_PIPE: i32 = omnigent_proto::exit::CLOSED_PIPE as i32;

/// An error that must end the process with [`EXIT_CONFIG`] instead of 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The user interrupted (Ctrl-C): exit [`EXIT_INTERRUPTED`], printing nothing more.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// A failure already shown on stderr as it happened: exit 1 without printing it a second time.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyShown(pub String);

/// Print `err` with its causes on stderr and pick the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    if err.downcast_ref::<Interrupted>().is_some() {
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    if err.downcast_ref::<AlreadyShown>().is_some() {
        return ExitCode::from(1);
    }
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

/// The one place a closed stdout or stderr is handled: `println!` and friends panic on EPIPE (Rust ignores
/// SIGPIPE), so this hook turns that panic into a quiet exit with [`EXIT_CLOSED_PIPE`], as `head` expects of a
/// writer. Any other panic goes to the default hook. Commands that stream (`run`) write through [`out`]
/// instead and never reach the panic.
pub fn exit_quietly_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        let printing = message.starts_with("failed printing to stdout")
            || message.starts_with("failed printing to stderr");
        if printing && (message.contains("Broken pipe") || message.contains("os error 32")) {
            std::process::exit(EXIT_CLOSED_PIPE);
        }
        default(info);
    }));
}

/// Write `text` to stdout and flush; if the reader has gone away, exit quietly ([`EXIT_CLOSED_PIPE`]).
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    if let Err(e) = written
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(EXIT_CLOSED_PIPE);
    }
}
