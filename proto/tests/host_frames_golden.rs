//! Every host tunnel frame the Python omnigent 0.19.1 sent or received in the captured session decodes into our
//! types and re-encodes field for field.

use omnigent_proto::host_frames::HostFrame;
use serde_json::Value;

const CAPTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/golden/omnigent-0.19.1-host-runner-tunnels.jsonl"
));

fn host_frames() -> Vec<Value> {
    CAPTURE
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["kind"] == "ws_text")
        .map(|entry| entry["data"].clone())
        .filter(|frame| {
            frame["kind"]
                .as_str()
                .is_some_and(|kind| kind.starts_with("host."))
        })
        .collect()
}

#[test]
fn captured_host_frames_round_trip_exactly() {
    let frames = host_frames();
    assert!(
        frames.len() >= 5,
        "the capture should hold host frames, found {}",
        frames.len()
    );
    let mut kinds = std::collections::BTreeSet::new();
    for frame in frames {
        let text = frame.to_string();
        let decoded = HostFrame::decode(&text)
            .unwrap_or_else(|err| panic!("captured frame does not decode: {err}\n{text}"));
        assert_ne!(
            decoded,
            HostFrame::Unknown,
            "captured kind not modelled: {text}"
        );
        let reencoded: Value =
            serde_json::from_str(&decoded.encode()).expect("our encoding is JSON");
        assert_eq!(reencoded, frame, "re-encoding changed the frame");
        kinds.insert(frame["kind"].as_str().unwrap_or_default().to_owned());
    }
    for expected in [
        "host.hello",
        "host.stat",
        "host.stat_result",
        "host.launch_runner",
        "host.launch_runner_result",
    ] {
        assert!(
            kinds.contains(expected),
            "capture lacks {expected}: {kinds:?}"
        );
    }
}
