//! Golden JSON: the shapes captured from omnigent 0.19.1 (`golden/omnigent-0.19.1-turn-sse-and-items.json`,
//! a copy of `reference/wire-samples/`) must parse into our types and serialize back unchanged.

use omnigent_proto::api::{
    Agent, ErrorBody, ErrorCode, ErrorDetail, EventAccepted, HealthResponse, ListEnvelope,
    Liveness, SessionCreateRequest, SessionEventInput, SessionListItem, SessionLiveness,
    SessionPatchRequest, SessionResponse, SessionStatus, WireItem,
};
use omnigent_proto::events::{ServerEvent, SseParser, sse_frame};
use serde_json::{Value, json};

fn sample() -> Value {
    let text = include_str!("golden/omnigent-0.19.1-turn-sse-and-items.json");
    serde_json::from_str(text).expect("the golden sample is JSON")
}

#[test]
fn every_captured_sse_event_round_trips_unchanged() {
    let sample = sample();
    let events = sample["events"].as_array().expect("events array");
    assert_eq!(events.len(), 27);
    for raw in events {
        let mut raw = raw.clone();
        let line = raw
            .as_object_mut()
            .and_then(|o| o.remove("_event_line"))
            .expect("_event_line");
        let parsed: ServerEvent = serde_json::from_value(raw.clone())
            .unwrap_or_else(|e| panic!("cannot parse {raw}: {e}"));
        assert_eq!(parsed.event_type(), line.as_str().expect("string"));
        assert_eq!(raw["type"], line);
        let back = serde_json::to_value(&parsed).expect("serializes");
        assert_eq!(back, raw, "round trip changed {line}");
    }
}

#[test]
fn post_events_answer_round_trips() {
    let sample = sample();
    let raw = &sample["post_events_response"];
    let parsed: EventAccepted = serde_json::from_value(raw.clone()).expect("parses");
    assert!(parsed.queued);
    assert_eq!(
        parsed.item_id.as_deref(),
        Some("78275d6dc1114ad29f7548a0dab9d0d8")
    );
    assert_eq!(&serde_json::to_value(&parsed).expect("ser"), raw);
    // Control events answer without an item id, and the field is absent, not null.
    let control = EventAccepted {
        queued: false,
        item_id: None,
    };
    assert_eq!(
        serde_json::to_value(&control).expect("ser"),
        json!({"queued": false})
    );
}

#[test]
fn items_page_round_trips_flat() {
    let sample = sample();
    let raw = &sample["items"];
    let page: ListEnvelope<WireItem> = serde_json::from_value(raw.clone()).expect("parses");
    assert_eq!(page.object, "list");
    assert_eq!(page.data.len(), 3);
    assert_eq!(page.data[0].kind, "message");
    assert_eq!(page.data[0].data["role"], "user");
    assert_eq!(page.data[1].kind, "resource_event");
    assert_eq!(page.data[2].data["model"], "interop-mock-agent");
    assert_eq!(&serde_json::to_value(&page).expect("ser"), raw);
    let rebuilt = ListEnvelope::new(page.data.clone(), false, |i| i.id.as_str());
    assert_eq!(rebuilt, page);
}

#[test]
fn snapshot_parses_and_our_fields_use_its_names() {
    let sample = sample();
    let raw = &sample["snapshot"];
    let snap: SessionResponse = serde_json::from_value(raw.clone()).expect("snapshot parses");
    assert_eq!(snap.status, SessionStatus::Idle);
    assert_eq!(snap.items.len(), 3);
    assert_eq!(snap.items[0].data["role"], "user");
    assert_eq!(
        snap.runner_id.as_deref(),
        Some("runner_token_695894e76682802a837213595ab91cff")
    );
    // Every field we emit exists in the Python snapshot with the same JSON type family.
    let ours = serde_json::to_value(&snap).expect("ser");
    for (key, value) in ours.as_object().expect("object") {
        let theirs = raw
            .get(key)
            .unwrap_or_else(|| panic!("field {key} is not in the 0.19.1 snapshot"));
        assert_eq!(value, theirs, "field {key} differs");
    }
}

#[test]
fn list_item_and_create_shapes() {
    let item = SessionListItem {
        id: "236c499235044eda91f89497da50b959".into(),
        agent_id: "a".repeat(32),
        agent_name: Some("echo".into()),
        status: SessionStatus::Running,
        created_at: 1,
        updated_at: 2,
        title: None,
        labels: Default::default(),
        runner_id: None,
        host_id: None,
        runner_online: false,
        host_online: None,
        workspace: None,
        archived: false,
        pending_elicitations_count: 0,
        parent_session_id: None,
        kind: "default".into(),
        sub_agent_name: None,
        viewer_last_seen: None,
        viewer_unread: false,
    };
    let v = serde_json::to_value(&item).expect("ser");
    assert_eq!(v["status"], "running");
    assert_eq!(v["title"], Value::Null);
    let create: SessionCreateRequest = serde_json::from_value(json!({
        "agent_id": "echo",
        "initial_items": [{"type": "message", "data": {"role": "user", "content": []}}],
        "labels": {"k": "v"},
        "host_type": "external",
        "unknown_field_from_a_newer_client": 1
    }))
    .expect("create parses and ignores unknown fields");
    assert_eq!(create.initial_items.len(), 1);
    assert_eq!(create.labels["k"], "v");
    let ev: SessionEventInput =
        serde_json::from_value(json!({"type": "interrupt"})).expect("parses");
    assert_eq!(ev.data, json!({}));
}

#[test]
fn patch_distinguishes_absent_from_null() {
    let p: SessionPatchRequest = serde_json::from_value(json!({"title": "t"})).expect("parses");
    assert_eq!(p.runner_id, None);
    let p: SessionPatchRequest =
        serde_json::from_value(json!({"runner_id": null})).expect("parses");
    assert_eq!(p.runner_id, Some(None));
    let p: SessionPatchRequest =
        serde_json::from_value(json!({"runner_id": "r1"})).expect("parses");
    assert_eq!(p.runner_id, Some(Some("r1".into())));
}

#[test]
fn error_body_and_status_table() {
    let body = ErrorBody {
        error: ErrorDetail {
            code: ErrorCode::RunnerUnavailable,
            message: "m".into(),
            required_role: None,
        },
    };
    assert_eq!(
        serde_json::to_value(&body).expect("ser"),
        json!({"error": {"code": "runner_unavailable", "message": "m"}})
    );
    let table = [
        (ErrorCode::InvalidInput, 400),
        (ErrorCode::WrongReplica, 400),
        (ErrorCode::Unauthorized, 401),
        (ErrorCode::Forbidden, 403),
        (ErrorCode::NotFound, 404),
        (ErrorCode::AlreadyExists, 409),
        (ErrorCode::Conflict, 409),
        (ErrorCode::WorkspaceMissing, 410),
        (ErrorCode::HarnessNotConfigured, 412),
        (ErrorCode::MisdirectedRequest, 421),
        (ErrorCode::InternalError, 500),
        (ErrorCode::HarnessProtocolViolation, 500),
        (ErrorCode::RunnerUnavailable, 503),
        (ErrorCode::RunnerCapabilityMismatch, 503),
        (ErrorCode::StorageUnavailable, 503),
        (ErrorCode::StorageFull, 507),
    ];
    for (code, status) in table {
        assert_eq!(code.status(), status, "{code:?}");
    }
}

#[test]
fn health_with_one_session_matches_the_wire() {
    let h = HealthResponse {
        status: "ok".into(),
        session: Some(SessionLiveness {
            id: "x".into(),
            liveness: Liveness {
                runner_online: true,
                host_online: None,
                host_version: None,
            },
        }),
        sessions: None,
        storage: None,
    };
    assert_eq!(
        serde_json::to_value(&h).expect("ser"),
        json!({"status":"ok","session":{"id":"x","runner_online":true,"host_online":null,"host_version":null}})
    );
    let bare = HealthResponse {
        status: "ok".into(),
        session: None,
        sessions: None,
        storage: None,
    };
    assert_eq!(
        serde_json::to_value(&bare).expect("ser"),
        json!({"status":"ok"})
    );
}

#[test]
fn agent_shape() {
    let a: Agent = serde_json::from_value(json!({
        "id": "0".repeat(32), "object": "agent", "name": "echo", "description": "d", "created_at": 0, "harness": "echo"
    }))
    .expect("parses");
    assert_eq!(a.name, "echo");
}

#[test]
fn sse_frames_parse_back() {
    let ev = ServerEvent::heartbeat(None);
    let json = serde_json::to_string(&ev).expect("ser");
    let frame = sse_frame(ev.event_type(), 7, &json);
    assert_eq!(
        frame,
        "event: session.heartbeat\nid: 7\ndata: {\"type\":\"session.heartbeat\",\"sequence_number\":null,\"server_time\":null}\n\n"
    );
    let mut p = SseParser::new(1 << 16);
    let got = p.push(frame.as_bytes()).expect("small");
    assert_eq!(got[0].id.as_deref(), Some("7"));
    let back: ServerEvent = serde_json::from_str(&got[0].data).expect("parses");
    assert_eq!(back, ev);
}
