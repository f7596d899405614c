//! The one place the CLI listens for signals: SIGTERM or SIGINT stops a foreground process (`daemon run`,
//! `server run`, `runner`), and SIGINT alone is Ctrl-C for the interactive commands (`run`, `attach`, the
//! foreground `host URL`).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM and SIGINT, listened for from the moment this is made (make it before saying ready, so a stop
/// right after ready is graceful too).
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn listen() -> std::io::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C); on Ctrl-C alone if SIGTERM cannot be listened for.
pub async fn stop_requested() {
    match StopSignals::listen() {
        Ok(mut signals) => {
            signals.recv().await;
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Ctrl-C as a stream: one listener for a whole session, so a Ctrl-C between two waits is never lost.
pub fn interrupts() -> std::io::Result<Signal> {
    signal(SignalKind::interrupt())
}
