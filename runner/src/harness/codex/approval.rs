//! Codex's approval requests (app-server `ServerRequest`s) as questions for the session's clients, and the
//! answers the protocol wants back. Pure: no I/O.

use std::collections::HashMap;

use omnigent_proto::elicitation::{Action, ElicitationParams};
use serde_json::{Value, json};

/// Which approval protocol a request speaks: the v2 item requests, or the older v1 ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// `item/commandExecution/requestApproval`, `item/fileChange/requestApproval`: `accept` / `decline` /
    /// `cancel`.
    Item,
    /// `execCommandApproval`, `applyPatchApproval`: `approved` / `denied` / `abort`.
    Legacy,
}

/// One approval request of the app-server.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Question {
    wire: Wire,
    /// `commandExecution` or `fileChange`.
    tool_name: &'static str,
    /// The item (v2) or call (v1) it is about: the `call_id` of its `function_call`.
    pub item_id: String,
    /// What it would do, for the message.
    subject: String,
    /// Its arguments, for the preview.
    preview: String,
    reason: Option<String>,
}

impl Question {
    /// The question `method` with `params` asks, if it is an approval request; `arguments`: the turn's tool
    /// calls so far by item id (a file change's request names only its item).
    pub fn of(
        method: &str,
        params: &Value,
        arguments: &HashMap<String, String>,
    ) -> Option<Question> {
        let text = |k: &str| params.get(k).and_then(Value::as_str).map(str::to_owned);
        let (wire, tool_name, item_id) = match method {
            "item/commandExecution/requestApproval" => {
                (Wire::Item, "commandExecution", text("itemId")?)
            }
            "item/fileChange/requestApproval" => (Wire::Item, "fileChange", text("itemId")?),
            "execCommandApproval" => (Wire::Legacy, "commandExecution", text("callId")?),
            "applyPatchApproval" => (Wire::Legacy, "fileChange", text("callId")?),
            _ => return None,
        };
        let command = match params.get("command") {
            Some(Value::String(command)) => Some(command.clone()),
            Some(Value::Array(argv)) => Some(
                argv.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        };
        let files = params
            .get("fileChanges")
            .and_then(Value::as_object)
            .map(|changes| changes.keys().cloned().collect::<Vec<_>>().join(", "));
        let preview = arguments
            .get(&item_id)
            .cloned()
            .unwrap_or_else(|| params.to_string());
        let subject = command
            .or(files)
            .or_else(|| text("grantRoot").map(|root| format!("write under {root}")))
            .unwrap_or_else(|| match tool_name {
                "fileChange" => "a file change".to_owned(),
                _ => "a command".to_owned(),
            });
        Some(Question {
            wire,
            tool_name,
            item_id,
            subject: subject.chars().take(200).collect(),
            preview,
            reason: text("reason").filter(|r| !r.is_empty()),
        })
    }

    /// The question for the session's clients.
    pub fn params(&self) -> ElicitationParams {
        let mut message = format!("Allow {}: `{}`?", self.tool_name, self.subject);
        if let Some(reason) = &self.reason {
            message.push_str(&format!(" ({reason})"));
        }
        ElicitationParams::tool_approval("codex", self.tool_name, message, &self.preview)
    }

    /// The JSON-RPC result for request `id` answered with `action`.
    pub fn reply(&self, id: &Value, action: Action) -> Value {
        let decision = match (self.wire, action) {
            (Wire::Item, Action::Accept) => "accept",
            (Wire::Item, Action::Decline) => "decline",
            (Wire::Item, Action::Cancel) => "cancel",
            (Wire::Legacy, Action::Accept) => "approved",
            (Wire::Legacy, Action::Decline) => "denied",
            (Wire::Legacy, Action::Cancel) => "abort",
        };
        json!({"id": id, "result": {"decision": decision}})
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_command_request_is_asked_and_answered_in_its_protocols_words() {
        let params = json!({"threadId": "t", "turnId": "u", "itemId": "call_1", "startedAtMs": 1,
            "command": "touch approved.txt", "cwd": "/ws", "reason": "needs to write outside the sandbox"});
        let arguments = HashMap::from([(
            "call_1".to_owned(),
            "{\"command\":\"touch approved.txt\"}".to_owned(),
        )]);
        let q = Question::of("item/commandExecution/requestApproval", &params, &arguments).unwrap();
        assert_eq!(q.item_id, "call_1");
        let asked = q.params();
        assert_eq!(
            asked.message,
            "Allow commandExecution: `touch approved.txt`? (needs to write outside the sandbox)"
        );
        assert_eq!(asked.policy_name.as_deref(), Some("codex"));
        assert_eq!(
            asked.content_preview.as_deref(),
            Some("{\"command\":\"touch approved.txt\"}")
        );
        assert_eq!(
            q.reply(&json!(7), Action::Accept),
            json!({"id": 7, "result": {"decision": "accept"}})
        );
        assert_eq!(
            q.reply(&json!(7), Action::Decline)["result"]["decision"],
            "decline"
        );
        assert_eq!(
            q.reply(&json!(7), Action::Cancel)["result"]["decision"],
            "cancel"
        );
    }

    #[test]
    fn the_older_requests_get_the_older_decisions_and_others_are_not_questions() {
        let params = json!({"callId": "c", "conversationId": "t", "cwd": "/ws", "parsedCmd": [],
            "command": ["rm", "-rf", "build"]});
        let q = Question::of("execCommandApproval", &params, &HashMap::new()).unwrap();
        assert_eq!(
            q.params().message,
            "Allow commandExecution: `rm -rf build`?"
        );
        assert_eq!(
            q.reply(&json!("r"), Action::Accept)["result"]["decision"],
            "approved"
        );
        assert_eq!(
            q.reply(&json!("r"), Action::Decline)["result"]["decision"],
            "denied"
        );
        assert_eq!(
            q.reply(&json!("r"), Action::Cancel)["result"]["decision"],
            "abort"
        );
        let patch = json!({"callId": "p", "conversationId": "t", "fileChanges": {"/ws/a.txt": {}}});
        assert_eq!(
            Question::of("applyPatchApproval", &patch, &HashMap::new())
                .unwrap()
                .params()
                .message,
            "Allow fileChange: `/ws/a.txt`?"
        );
        assert!(Question::of("item/tool/requestUserInput", &json!({}), &HashMap::new()).is_none());
    }
}
