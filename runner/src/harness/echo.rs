//! The `echo` harness: streams the user's last input back, word by word. For demos and tests.

use super::{EventSink, HarnessError, HistoryEntry, Turn, TurnOutcome};
use tokio_util::sync::CancellationToken;

pub async fn run_turn(
    turn: &Turn,
    sink: &EventSink,
    cancel: &CancellationToken,
) -> Result<TurnOutcome, HarnessError> {
    let input = match turn.history.last() {
        Some(HistoryEntry::User { text }) => text.clone(),
        _ => String::new(),
    };
    let mut echoed = String::new();
    for word in input.split_inclusive(' ') {
        if cancel.is_cancelled() {
            return Err(HarnessError::Interrupted);
        }
        sink.text_delta(word);
        echoed.push_str(word);
        tokio::task::yield_now().await;
    }
    Ok(TurnOutcome {
        new_history: vec![HistoryEntry::Assistant { text: echoed }],
        usage: None,
    })
}
