//! Header names and values the omnigent processes send one another, and which of them carry secrets
//! (reference omnigent-server-v1.md §3.1, omnigent-host-v1.md §5.1).

/// The `Origin` first-party omnigent processes (runners, hosts, the CLI) send. A browser page cannot send it,
/// so it is always allowed where an origin is checked.
pub const INTERNAL_ORIGIN: &str = "omnigent://internal";

/// A runner's binding token, on its tunnel upgrade and on `POST /v1/runners/{id}/token`.
pub const RUNNER_TUNNEL_TOKEN: &str = "x-omnigent-runner-tunnel-token";

/// A managed host's token on the host tunnel upgrade (and `GET /v1/me`).
pub const HOST_TOKEN: &str = "x-omnigent-host-token";

/// Sent by a server on the runner's `GET /v1/sessions/{id}/stream` to ask for the turn's record first (its
/// items so far and the open message's text as one `snapshot` delta). A peer that does not send it (a Python
/// omnigent server) gets the stream as before: the events kept while it had none, then the live ones.
pub const TURN_RECORD_HEADER: &str = "x-omnigent-turn-record";

/// The value of [`TURN_RECORD_HEADER`] that asks for the record.
pub const TURN_RECORD_WANTED: &str = "1";

/// Asked by a runner on `GET /v1/sessions/{id}/agent/contents` (value `1`); the answer echoes it with the MCP
/// selection (`{}`: every server of the spec).
pub const MCP_SELECTION: &str = "x-omnigent-mcp-selection";

/// Headers of `GET /v1/sessions/{id}/agent/contents` (the bundle, `application/gzip`) that describe the agent.
pub const AGENT_ID: &str = "x-agent-id";
pub const AGENT_VERSION: &str = "x-agent-version";
pub const AGENT_NAME: &str = "x-agent-name";
/// `true` or `false`.
pub const AGENT_SESSION_SCOPED: &str = "x-agent-session-scoped";

/// Headers whose values are credentials: they are never logged, at any level.
pub const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    RUNNER_TUNNEL_TOKEN,
    HOST_TOKEN,
];

/// What a secret value is replaced with wherever it would be shown.
pub const REDACTED: &str = "[redacted]";

/// Whether the header `name` (any case) carries a credential.
pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Frame fields whose values are credentials (`host.launch_runner.binding_token`, `hello.direct_attach_token`).
const SECRET_FIELDS: &[&str] = &["binding_token", "direct_attach_token", "token", "api_key"];

/// A tunnel frame as it may appear in a trace line: credential fields and secret headers (in a `request`
/// frame's `[[name, value]…]` list) replaced by [`REDACTED`], cut to `max` characters. Text that is not JSON is
/// not shown at all (it could be anything).
pub fn redacted_frame(text: &str, max: usize) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else {
        return format!("<{} bytes, not JSON>", text.len());
    };
    redact(&mut value);
    let shown = value.to_string();
    if shown.chars().count() <= max {
        shown
    } else {
        let mut cut: String = shown.chars().take(max).collect();
        cut.push_str(&format!("…({} bytes)", shown.len()));
        cut
    }
}

fn redact(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if v.is_string() && SECRET_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(key)) {
                    *v = Value::from(REDACTED);
                } else if key == "headers" {
                    redact_headers(v);
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `[[name, value]…]` or `{name: value}`.
fn redact_headers(headers: &mut serde_json::Value) {
    use serde_json::Value;
    match headers {
        Value::Array(pairs) => {
            for pair in pairs {
                if let Value::Array(kv) = pair
                    && kv.len() == 2
                    && kv[0].as_str().is_some_and(is_secret_header)
                {
                    kv[1] = Value::from(REDACTED);
                }
            }
        }
        Value::Object(map) => {
            for (name, v) in map.iter_mut() {
                if is_secret_header(name) {
                    *v = Value::from(REDACTED);
                }
            }
        }
        other => redact(other),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_are_shown_without_their_secrets() {
        let launch = r#"{"kind":"host.launch_runner","request_id":"r1","binding_token":"s3cret","workspace":"/w"}"#;
        let shown = super::redacted_frame(launch, 1000);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("/w"), "{shown}");
        let request = r#"{"kind":"request","id":"1","headers":[["authorization","Bearer s3cret"],["X-Omnigent-Runner-Tunnel-Token","s3cret"],["accept","*/*"]]}"#;
        let shown = super::redacted_frame(request, 1000);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("*/*"), "{shown}");
        assert_eq!(super::redacted_frame("s3cret", 1000), "<6 bytes, not JSON>");
        assert!(super::redacted_frame(launch, 10).ends_with(" bytes)"));
    }

    #[test]
    fn token_headers_are_secret_in_any_case() {
        assert!(super::is_secret_header("Authorization"));
        assert!(super::is_secret_header("X-Omnigent-Runner-Tunnel-Token"));
        assert!(super::is_secret_header("x-omnigent-host-token"));
        assert!(!super::is_secret_header("content-type"));
    }
}
