//! Process exit codes shared by every omnigent binary (the CLI, the daemon it runs, the runners the daemon
//! supervises). Documented in README.md. A supervisor reads them: the daemon does not relaunch a runner that
//! exited [`CONFIG`], and a service manager must not restart a daemon that did.

/// Success; for an idle runner, a clean exit that is not reported.
pub const OK: u8 = 0;
/// A failure a retry may fix.
pub const FAILURE: u8 = 1;
/// A usage error (clap's own code).
pub const USAGE: u8 = 2;
/// A configuration error (EX_CONFIG): wrong flag values, unusable files, refused settings, or a peer that can
/// never be talked to (protocol mismatch, rejected token). No retry fixes it.
pub const CONFIG: u8 = 78;
/// Ended by Ctrl-C (128 + SIGINT): `omnigent run` / `attach` after an interrupted turn.
pub const INTERRUPTED: u8 = 130;
/// The reader of stdout or stderr went away (128 + SIGPIPE, what a filter killed by SIGPIPE reports), e.g.
/// `omnigent … | head -1`: the CLI exits quietly with this code.
pub const CLOSED_PIPE: u8 = 141;
