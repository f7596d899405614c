//! Pi's extension dialogs (`extension_ui_request`, RPC mode) as questions for the session's clients. Pi has no
//! permission system of its own: its extensions ask (a permission gate's `ctx.ui.confirm` or a yes/no
//! `ctx.ui.select` from a `tool_call` hook, before the tool runs). A yes/no dialog becomes an approval of the
//! tool call Pi just started (`tool_execution_start` comes before its hooks); any other dialog (a free choice,
//! text input, an editor) has no answer a client's Approve/Deny can give, and is cancelled. Pure: no I/O.

use omnigent_proto::elicitation::{Action, ElicitationParams};
use serde_json::{Value, json};

/// The tool call a dialog is about: the last one Pi started.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StartedCall {
    pub call_id: String,
    pub tool_name: String,
    pub arguments: String,
}

/// How a yes/no dialog is answered.
#[derive(Debug, Clone, PartialEq)]
enum Answers {
    /// `confirm`: `confirmed: true | false`.
    Confirm,
    /// `select` of two options, the first of which allows: `value: <yes> | <no>`.
    Select { yes: String, no: String },
}

/// One yes/no dialog of a Pi extension.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Dialog {
    /// The request's id, which the response must carry.
    id: Value,
    answers: Answers,
    message: String,
    call: Option<StartedCall>,
}

/// Words that make a select's first option the allowing one.
const YES: &[&str] = &[
    "yes", "y", "allow", "approve", "accept", "ok", "run", "continue",
];

impl Dialog {
    /// The question `request` asks if it is a yes/no dialog, about `call` (the tool call Pi started last).
    /// `None`: not a dialog a client can answer with Approve/Deny (see [`cancel`]).
    pub fn of(request: &Value, call: Option<&StartedCall>) -> Option<Dialog> {
        let text = |k: &str| request.get(k).and_then(Value::as_str).unwrap_or("").trim();
        let id = request.get("id")?.clone();
        let answers = match text("method") {
            "confirm" => Answers::Confirm,
            "select" => {
                let options: Vec<&str> = request
                    .get("options")?
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                match options.as_slice() {
                    [yes, no] if YES.iter().any(|w| w.eq_ignore_ascii_case(yes.trim())) => {
                        Answers::Select {
                            yes: (*yes).to_owned(),
                            no: (*no).to_owned(),
                        }
                    }
                    _ => return None,
                }
            }
            _ => return None,
        };
        let message = [text("title"), text("message")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
        Some(Dialog {
            id,
            answers,
            message: if message.is_empty() {
                "A Pi extension asks to go on.".to_owned()
            } else {
                message
            },
            call: call.cloned(),
        })
    }

    /// The tool call it is about, for the request's `call_id`.
    pub fn call_id(&self) -> Option<String> {
        self.call.as_ref().map(|c| c.call_id.clone())
    }

    /// The question for the session's clients.
    pub fn params(&self) -> ElicitationParams {
        let (tool, preview) = match &self.call {
            Some(call) => (call.tool_name.as_str(), call.arguments.as_str()),
            None => ("extension", ""),
        };
        ElicitationParams::tool_approval("pi", tool, self.message.clone(), preview)
    }

    /// The `extension_ui_response` for `action`.
    pub fn reply(&self, action: Action) -> Value {
        match (&self.answers, action) {
            (_, Action::Cancel) => cancel(&self.id),
            (Answers::Confirm, action) => {
                json!({"type": "extension_ui_response", "id": self.id, "confirmed": action == Action::Accept})
            }
            (Answers::Select { yes, .. }, Action::Accept) => {
                json!({"type": "extension_ui_response", "id": self.id, "value": yes})
            }
            (Answers::Select { no, .. }, Action::Decline) => {
                json!({"type": "extension_ui_response", "id": self.id, "value": no})
            }
        }
    }
}

/// Whether `request` is a dialog (it waits for a response), not a fire-and-forget notice.
pub(super) fn is_dialog(request: &Value) -> bool {
    matches!(
        request.get("method").and_then(Value::as_str),
        Some("select" | "confirm" | "input" | "editor")
    )
}

/// The response that dismisses dialog `id` (the extension gets `undefined`, or `false` for a confirm).
pub(super) fn cancel(id: &Value) -> Value {
    json!({"type": "extension_ui_response", "id": id, "cancelled": true})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bash() -> StartedCall {
        StartedCall {
            call_id: "call_1".into(),
            tool_name: "bash".into(),
            arguments: "{\"command\":\"rm -rf build\"}".into(),
        }
    }

    #[test]
    fn a_confirm_is_an_approval_of_the_started_call_answered_confirmed() {
        let request = json!({"type": "extension_ui_request", "id": "u1", "method": "confirm",
            "title": "Dangerous command", "message": "rm -rf build"});
        let dialog = Dialog::of(&request, Some(&bash())).unwrap();
        assert_eq!(dialog.call_id().as_deref(), Some("call_1"));
        let params = dialog.params();
        assert_eq!(params.message, "Dangerous command\n\nrm -rf build");
        assert_eq!(params.tool_name.as_deref(), Some("bash"));
        assert_eq!(params.policy_name.as_deref(), Some("pi"));
        assert_eq!(
            params.content_preview.as_deref(),
            Some("{\"command\":\"rm -rf build\"}")
        );
        assert_eq!(
            dialog.reply(Action::Accept),
            json!({"type": "extension_ui_response", "id": "u1", "confirmed": true})
        );
        assert_eq!(dialog.reply(Action::Decline)["confirmed"], false);
        assert_eq!(dialog.reply(Action::Cancel)["cancelled"], true);
    }

    #[test]
    fn a_yes_no_select_answers_with_its_own_options_and_other_dialogs_are_not_questions() {
        let request = json!({"type": "extension_ui_request", "id": 7, "method": "select",
            "title": "Allow?", "options": ["Yes", "No"]});
        let dialog = Dialog::of(&request, None).unwrap();
        assert_eq!(dialog.params().tool_name.as_deref(), Some("extension"));
        assert_eq!(dialog.reply(Action::Accept)["value"], "Yes");
        assert_eq!(dialog.reply(Action::Decline)["value"], "No");
        assert_eq!(dialog.reply(Action::Decline)["id"], 7);
        for other in [
            json!({"id": "a", "method": "select", "options": ["red", "green"]}),
            json!({"id": "b", "method": "select", "options": ["Yes", "No", "Always"]}),
            json!({"id": "c", "method": "input", "title": "Name?"}),
            json!({"id": "d", "method": "editor"}),
            json!({"id": "e", "method": "notify", "message": "hi"}),
            json!({"method": "confirm"}),
        ] {
            assert!(Dialog::of(&other, None).is_none(), "{other}");
        }
        assert!(is_dialog(&json!({"method": "input"})));
        assert!(!is_dialog(&json!({"method": "notify"})));
    }
}
