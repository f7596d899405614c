//! `claude-sdk`: Claude Code through its own CLI (work in progress).

use super::{EventSink, HarnessError, Turn, TurnOutcome};
use tokio_util::sync::CancellationToken;

pub async fn run_turn(
    _turn: &Turn,
    _sink: &EventSink,
    _cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    Err(HarnessError::NotConfigured(
        "the claude-sdk harness is not implemented yet".to_owned(),
    ))
}
