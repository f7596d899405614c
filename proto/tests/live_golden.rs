//! Golden JSON of the live-client routes (`golden/omnigent-0.19.1-live-api.json`, answers of a live
//! omnigent 0.19.1 server captured with `pip install omnigent==0.19.1`): they parse into `proto::live` and
//! serialize back with the same values for every field both sides have.

use omnigent_proto::api::{EventAccepted, ListEnvelope, SessionEventInput};
use omnigent_proto::events::ServerEvent;
use omnigent_proto::live::{
    ChildSessionSummary, ExtensionList, HarnessEntry, ProjectOrder, ProjectOrderRequest,
    ProjectSortMode, ProjectSummary, ReadStatePut, SkillsResponse, UpdatesClientFrame,
    UpdatesServerFrame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn sample() -> Value {
    let text = include_str!("golden/omnigent-0.19.1-live-api.json");
    serde_json::from_str(text).expect("the golden sample is JSON")
}

/// Parse `raw` as `T` and serialize it back: equal to `raw` on every key of `raw` (ours may add keys).
fn round_trip<T: DeserializeOwned + Serialize>(raw: &Value) -> T {
    let parsed: T =
        serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("cannot parse {raw}: {e}"));
    let back = serde_json::to_value(&parsed).expect("serialize");
    same_on_shared_keys(raw, &back);
    parsed
}

fn same_on_shared_keys(theirs: &Value, ours: &Value) {
    match (theirs, ours) {
        (Value::Object(t), Value::Object(o)) => {
            for (key, value) in t {
                if let Some(mine) = o.get(key) {
                    same_on_shared_keys(value, mine);
                }
            }
        }
        (Value::Array(t), Value::Array(o)) => {
            assert_eq!(t.len(), o.len(), "{theirs} vs {ours}");
            for (a, b) in t.iter().zip(o) {
                same_on_shared_keys(a, b);
            }
        }
        _ => assert_eq!(theirs, ours),
    }
}

#[test]
fn updates_snapshot_parses_and_keeps_the_fields_it_shares() {
    let s = sample();
    let frame: UpdatesServerFrame = round_trip(&s["updates_snapshot"]);
    let UpdatesServerFrame::Snapshot { items } = frame else {
        panic!("a snapshot");
    };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].viewer_last_seen, Some(1_700_000_000));
    assert!(items[0].viewer_unread);
    // The frames of the other kinds, as routes_core.py builds them.
    for (raw, want) in [
        (
            json!({"type": "removed", "ids": ["a"]}),
            UpdatesServerFrame::Removed {
                ids: vec!["a".into()],
            },
        ),
        (json!({"type": "heartbeat"}), UpdatesServerFrame::Heartbeat),
        (
            json!({"type": "changed", "items": []}),
            UpdatesServerFrame::Changed { items: vec![] },
        ),
    ] {
        assert_eq!(round_trip::<UpdatesServerFrame>(&raw), want);
    }
    let watch: UpdatesClientFrame = round_trip(&json!({"type": "watch", "session_ids": ["x"]}));
    assert_eq!(
        watch,
        UpdatesClientFrame::Watch {
            session_ids: vec!["x".into()]
        }
    );
}

#[test]
fn projects_and_their_order() {
    let s = sample();
    let projects: Vec<ProjectSummary> = round_trip(&s["sessions_projects"]);
    assert_eq!(projects[0].name, "alpha");
    assert_eq!(projects[0].id, None);
    let default: ProjectOrder = round_trip(&s["projects_order_default"]);
    assert_eq!(default, ProjectOrder::default());
    let manual: ProjectOrder = round_trip(&s["projects_order_put_empty"]);
    assert_eq!(manual.sort_mode, ProjectSortMode::Manual);
    let after: ProjectOrder = round_trip(&s["projects_order_put_null_after_manual"]);
    assert_eq!(after.ordered_project_ids, Some(vec![]));
    // The request's field is required, and may be null.
    let null: ProjectOrderRequest =
        serde_json::from_value(json!({"ordered_project_ids": null})).expect("null");
    assert_eq!(null.ordered_project_ids, None);
    assert!(serde_json::from_value::<ProjectOrderRequest>(json!({})).is_err());
}

#[test]
fn read_state_request_is_strict() {
    let s = sample();
    let put: ReadStatePut = round_trip(&s["read_state_put_request"]);
    assert!(put.unread);
    for bad in [
        json!({"last_seen": 1}),
        json!({"last_seen": "1", "unread": true}),
        json!({"last_seen": 1, "unread": true, "x": 1}),
    ] {
        assert!(
            serde_json::from_value::<ReadStatePut>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn catalogs_child_sessions_and_presence() {
    let s = sample();
    let entry: HarnessEntry = round_trip(&s["harnesses_entry"]);
    assert_eq!(entry.id, "cursor");
    assert_eq!(entry.capabilities["interrupt"], true);
    let _: ExtensionList = round_trip(&s["extensions"]);
    let _: SkillsResponse = round_trip(&s["skills_response"]);
    let children: ListEnvelope<ChildSessionSummary> = round_trip(&s["child_sessions_empty"]);
    assert!(children.data.is_empty());
    let child: ChildSessionSummary = round_trip(&json!({
        "id": "c", "object": "child_session", "parent_session_id": "p", "title": "explorer:one",
        "task_summary": null, "tool": "explorer", "session_name": "one", "kind": "sub_agent",
        "created_at": 1, "updated_at": 2, "agent_id": null, "agent_name": null, "current_task_id": null,
        "current_task_status": null, "busy": false, "labels": {}, "last_task_error": null,
        "last_message_preview": null, "pending_elicitations_count": 0, "routed_model": null,
        "routing_decision_id": null
    }));
    assert_eq!(child.tool.as_deref(), Some("explorer"));
    let presence: ServerEvent = round_trip(&s["presence_event"]);
    assert_eq!(presence.event_type(), "session.presence");
}

#[test]
fn external_conversation_item_in_the_python_shape() {
    let s = sample();
    let ev: SessionEventInput = round_trip(&s["external_conversation_item_request"]);
    assert_eq!(ev.kind, "external_conversation_item");
    assert_eq!(ev.data["item_type"], "message");
    let accepted: EventAccepted = round_trip(&s["external_conversation_item_accepted"]);
    assert!(!accepted.queued);
    let usage = &s["external_session_usage_event"];
    assert_eq!(usage["type"], "session.usage");
}
