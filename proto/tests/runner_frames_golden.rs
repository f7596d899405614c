#![allow(clippy::unwrap_used)]
//! Golden test: every runner tunnel frame omnigent 0.19.1 sent (captured in
//! proto/tests/golden/, a copy of reference/wire-samples/omnigent-0.19.1-host-runner-tunnels.jsonl) decodes to its kind and re-encodes
//! field for field.

use omnigent_proto::runner_frames::{RunnerFrame, decode_body};
use serde_json::Value;

const CAPTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/omnigent-0.19.1-host-runner-tunnels.jsonl"
));

fn runner_frames() -> Vec<Value> {
    CAPTURE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).expect("capture line is JSON"))
        .filter(|e| e["kind"] == "ws_text")
        .map(|e| e["data"].clone())
        .filter(|d| !d["kind"].as_str().unwrap_or("").starts_with("host."))
        .collect()
}

#[test]
fn every_captured_runner_frame_round_trips_exactly() {
    let frames = runner_frames();
    assert!(
        frames.len() >= 50,
        "capture has {} runner frames",
        frames.len()
    );
    let mut kinds = std::collections::BTreeSet::new();
    for original in frames {
        let text = serde_json::to_string(&original).unwrap();
        let frame = RunnerFrame::decode(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(frame.kind(), original["kind"].as_str().unwrap(), "{text}");
        kinds.insert(frame.kind());
        let again: Value = serde_json::from_str(&frame.encode()).unwrap();
        assert_eq!(again, original, "re-encoding changed the frame");
    }
    let expected = [
        "event.ready",
        "hello",
        "request",
        "response.body",
        "response.end",
        "response.head",
    ];
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), expected);
}

#[test]
fn captured_hello_fields_are_modelled() {
    let hello = runner_frames()
        .into_iter()
        .find(|f| f["kind"] == "hello")
        .unwrap();
    let RunnerFrame::Hello(h) = RunnerFrame::decode(&hello.to_string()).unwrap() else {
        panic!("not a hello")
    };
    assert_eq!(h.frame_protocol_version, 1);
    assert_eq!(h.runner_version, "0.19.1");
    assert!(
        h.capabilities
            .iter()
            .any(|c| c == "session-event-ingest-v1")
    );
    assert_eq!(h.direct_attach_port, Some(34715));
    assert!(h.extra.contains_key("connection_id"));
}

#[test]
fn captured_requests_and_bodies_decode() {
    for f in runner_frames() {
        match RunnerFrame::decode(&f.to_string()).unwrap() {
            RunnerFrame::Request(r) => {
                assert_eq!(r.id.len(), 32);
                assert!(r.stream);
                assert!(r.headers.iter().any(|(k, v)| k == "host" && v == "runner"));
                if r.method == "POST" {
                    let body = decode_body(r.body.as_deref().unwrap(), r.encoding).unwrap();
                    let _: Value = serde_json::from_slice(&body).unwrap();
                } else {
                    assert_eq!(r.body, None);
                }
            }
            RunnerFrame::ResponseBody(b) => {
                assert!(!decode_body(&b.body, b.encoding).unwrap().is_empty());
            }
            _ => {}
        }
    }
}

#[test]
fn frames_we_send_have_the_python_shape() {
    use omnigent_proto::runner_frames::*;
    let pong = RunnerFrame::Pong(Ping {
        ts: 17.into(),
        extra: Default::default(),
    });
    assert_eq!(
        serde_json::from_str::<Value>(&pong.encode()).unwrap(),
        serde_json::json!({"kind":"pong","ts":17})
    );
    let cancel = RunnerFrame::RequestCancel(RequestCancel {
        id: "a".into(),
        reason: "client_disconnected".into(),
        extra: Default::default(),
    });
    assert_eq!(
        serde_json::from_str::<Value>(&cancel.encode()).unwrap(),
        serde_json::json!({"kind":"request.cancel","id":"a","reason":"client_disconnected"})
    );
    let close = RunnerFrame::WsClose(WsClose {
        ch_id: "0a0b0c0d".into(),
        code: 4404,
        reason: "no".into(),
        extra: Default::default(),
    });
    assert_eq!(
        serde_json::from_str::<Value>(&close.encode()).unwrap(),
        serde_json::json!({"kind":"ws.close","ch_id":"0a0b0c0d","code":4404,"reason":"no"})
    );
}
