#![allow(clippy::unwrap_used)]
//! Golden test: the runner-API bodies omnigent 0.19.1 sent through the runner tunnel (captured in
//! proto/tests/golden/, a copy of reference/wire-samples/omnigent-0.19.1-host-runner-tunnels.jsonl) parse as
//! `proto::runner_api` types and re-encode field for field; so do the ones our server builds.

use omnigent_proto::runner_api::{EventAccepted, Field, SessionCreate, SessionFacts, TurnEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const CAPTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/omnigent-0.19.1-host-runner-tunnels.jsonl"
));

/// Every tunnel frame of the capture.
fn frames() -> Vec<Value> {
    CAPTURE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "ws_text")
        .map(|e| e["data"].clone())
        .collect()
}

/// The JSON bodies of the captured `POST` requests whose path satisfies `path`.
fn request_bodies(path: impl Fn(&str) -> bool) -> Vec<Value> {
    frames()
        .into_iter()
        .filter(|f| f["kind"] == "request" && f["method"] == "POST")
        .filter(|f| path(f["path"].as_str().unwrap()))
        .map(|f| serde_json::from_str(f["body"].as_str().unwrap()).unwrap())
        .collect()
}

fn round_trips<T: DeserializeOwned + Serialize>(original: &Value) -> T {
    let parsed: T = serde_json::from_value(original.clone()).unwrap();
    let again = serde_json::to_value(&parsed).unwrap();
    assert_eq!(&again, original, "re-encoding changed the body");
    parsed
}

#[test]
fn every_captured_session_init_round_trips_and_is_read() {
    let bodies = request_bodies(|p| p == "/v1/sessions");
    assert_eq!(bodies.len(), 2);
    for body in &bodies {
        let init: SessionCreate = round_trips(body);
        assert_eq!(init.session_id, body["session_id"].as_str().unwrap());
        assert_eq!(init.sub_agent_name, Field::Null);
        assert_eq!(init.workspace(), Some("$TMPROOT/workspace"));
        assert_eq!(init.harness_name(), None);
        let session_init = init.session_init.as_ref().unwrap();
        assert_eq!(session_init.protocol_version, Some(2));
        assert!(session_init.extra.contains_key("sub_agent_name"));
    }
}

#[test]
fn the_captured_turn_event_round_trips_and_is_read() {
    let bodies = request_bodies(|p| p.ends_with("/events"));
    assert_eq!(bodies.len(), 1);
    let event: TurnEvent = round_trips(&bodies[0]);
    assert_eq!(event.kind, "message");
    assert_eq!(event.agent_name(), Some("interop-mock-agent"));
    assert_eq!(event.extra["role"], "user");
    assert!(event.content.as_ref().unwrap().is_array());
}

#[test]
fn the_captured_event_answer_round_trips() {
    let answer = frames()
        .into_iter()
        .filter(|f| f["kind"] == "response.body")
        .filter_map(|f| serde_json::from_str::<Value>(f["body"].as_str()?).ok())
        .find(|b| b["status"] == "accepted")
        .unwrap();
    let accepted: EventAccepted = round_trips(&answer);
    assert_eq!(accepted.detail, "Turn started.");
}

#[test]
fn the_init_our_server_builds_has_the_captured_fields_plus_the_harness() {
    let captured = &request_bodies(|p| p == "/v1/sessions")[0];
    let labels = [("omnigent.ui".to_owned(), "terminal".to_owned())].into();
    let ours = SessionCreate::new(SessionFacts {
        session_id: "s1",
        agent_id: "a1",
        harness: Some("echo"),
        sub_agent_name: None,
        workspace: Some("/w"),
        labels: &labels,
        created_at: 1_796_000_000,
        updated_at: 1_796_000_001,
        server_version: "0.1.0",
    });
    let ours = serde_json::to_value(&ours).unwrap();
    for key in captured.as_object().unwrap().keys() {
        assert!(ours.get(key).is_some(), "our init lacks `{key}`");
    }
    assert_eq!(ours["harness"], "echo");
    assert_eq!(
        ours["session_init"]["snapshot"],
        json!({"created_at": 1_796_000_000, "updated_at": 1_796_000_001, "workspace": "/w",
               "labels": {"omnigent.ui": "terminal"}, "harness_override": "echo"})
    );
    // The fields a 0.19.1 runner requires of the snapshot (its `RunnerSessionInitSnapshot`): without them it
    // refuses the whole init.
    for key in ["created_at", "updated_at"] {
        assert!(
            captured["session_init"]["snapshot"].get(key).is_some(),
            "the capture has `{key}`"
        );
        assert!(
            ours["session_init"]["snapshot"][key].is_i64(),
            "our snapshot lacks `{key}`"
        );
    }
    let back: SessionCreate = round_trips(&ours);
    assert_eq!(back.harness_name(), Some("echo"));
}
