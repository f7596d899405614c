//! Tracing for every role of the binary: the daemon (size-rotated `daemon.log`, plus stderr with `--foreground`,
//! level changeable live from config.toml), the server and runner processes (stderr, which the daemon sends to
//! their rotated logs), and the short-lived CLI commands (stderr, warnings).
//!
//! Every subscriber drops failed writes (`log_internal_errors(false)`): a child's stderr is a pipe to the daemon,
//! and when the daemon dies that pipe breaks; tracing's default would report each failed write with `eprintln!`
//! to the same stderr, which panics (inside a connection task or the shutdown future of the server).

use std::sync::{Arc, Mutex};

use omnigent_daemon::config::logfile::{DEFAULT_KEEP, DEFAULT_MAX_BYTES, RotatingFile};
use omnigent_proto::paths::Paths;
use tracing_subscriber::filter::{FilterFn, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, reload};

/// Environment variable with the initial log filter (tracing `EnvFilter` syntax).
pub const LOG_ENV: &str = "OMNIGENT_LOG";

/// Callback that swaps the daemon's log filter (for `log_level` in config.toml).
pub type SetLevel = Arc<dyn Fn(&str) + Send + Sync>;

/// Drops the WebSocket library's trace records, whatever the level asked for: they dump every frame and the
/// client's upgrade request whole, with binding tokens (`host.launch_runner`, the tunnel token header) and the
/// runner's HTTP headers in them. Tokens never reach a log line (DESIGN §7).
fn secret_safe() -> FilterFn {
    filter_fn(|meta| {
        !(*meta.level() == tracing::Level::TRACE
            && (meta.target().starts_with("tungstenite")
                || meta.target().starts_with("tokio_tungstenite")))
    })
}

/// Install the daemon's subscriber. Returns a setter for the level.
pub fn init_daemon(paths: &Paths, foreground: bool) -> anyhow::Result<SetLevel> {
    let path = paths.logs_dir().join("daemon.log");
    let file = RotatingFile::open(&path, DEFAULT_MAX_BYTES, DEFAULT_KEEP)
        .map_err(|e| anyhow::anyhow!("cannot open the daemon log {}: {e}", path.display()))?;
    let initial = std::env::var(LOG_ENV).unwrap_or_else(|_| "info".to_owned());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&initial));
    let file_layer = fmt::layer()
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .log_internal_errors(false);
    // A stderr that goes away (a closed terminal, a dead pipe) must not make logging panic: tracing's own
    // error report would be an `eprintln!` to that same stderr.
    let stderr_layer = foreground.then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .log_internal_errors(false)
    });
    let _ = tracing_subscriber::registry()
        .with(secret_safe())
        .with(filter)
        .with(file_layer.and_then(stderr_layer))
        .try_init();
    let env_set = std::env::var(LOG_ENV).is_ok();
    Ok(Arc::new(move |level: &str| {
        // An explicit OMNIGENT_LOG wins over the file.
        if env_set {
            return;
        }
        match EnvFilter::try_new(level) {
            Ok(f) => {
                let _ = handle.modify(|cur| *cur = f);
                tracing::info!(level, "log level changed");
            }
            Err(e) => {
                tracing::warn!(level, error = %e, "ignoring an invalid log_level in config.toml")
            }
        }
    }))
}

/// Install the CLI's subscriber: warnings and errors on stderr (or `OMNIGENT_LOG`).
pub fn init_cli() {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(secret_safe())
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .log_internal_errors(false)
                .with_filter(filter),
        )
        .try_init();
}

/// Install the subscriber of a server or runner process: stderr, filter from `OMNIGENT_LOG`, else `RUST_LOG`,
/// else `info`.
pub fn init_process() {
    let filter = EnvFilter::try_from_env(LOG_ENV)
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(secret_safe())
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .log_internal_errors(false)
                .with_filter(filter),
        )
        .try_init();
}
