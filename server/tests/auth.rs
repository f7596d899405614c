//! Devices, roles and pairing (issue 13) against a real in-process server. The server is told not to trust
//! loopback (`trust_loopback: false`), so every request of these tests is a peer from another machine; the
//! owner is the device `OMNIGENT_OWNER_TOKEN` makes. Each refusal is checked together with "nothing changed".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Sse, TestServer, WAIT, status_json};
use futures_util::StreamExt;
use omnigent_server::Secret;
use reqwest::Method;
use serde_json::{Value, json};

const OWNER: &str = "owner-token-for-tests-0123456789abcdefghijkl";

async fn remote_server(home: &std::path::Path) -> TestServer {
    TestServer::start_with(home, |c| {
        c.trust_loopback = false;
        c.owner_token = Some(Secret(OWNER.to_owned()));
    })
    .await
}

/// [`remote_server`] whose expiries are judged by `clock`.
async fn remote_server_at(
    home: &std::path::Path,
    clock: &omnigent_server::ManualClock,
) -> TestServer {
    let clock = clock.clock();
    TestServer::start_with(home, move |c| {
        c.trust_loopback = false;
        c.owner_token = Some(Secret(OWNER.to_owned()));
        c.clock = clock;
    })
    .await
}

/// One request with an optional bearer token; JSON body for methods that write.
async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = s.client.request(method, s.u(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    status_json(req.send().await.expect("request")).await
}

async fn code_for(s: &TestServer, role: &str, extra: Value) -> Value {
    let mut body = json!({"role": role});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, code) = call(
        s,
        Method::POST,
        "/v1/pairing/codes",
        Some(OWNER),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{code}");
    code
}

/// A CLI device of `role`: (device id, token).
async fn pair_cli(s: &TestServer, role: &str) -> (String, String) {
    let code = code_for(s, role, json!({})).await;
    let (status, claim) = call(
        s,
        Method::POST,
        "/v1/pairing/claim",
        None,
        Some(json!({"code": code["code"], "name": format!("{role} cli"), "client": "cli"})),
    )
    .await;
    assert_eq!(status, 200, "{claim}");
    assert_eq!(claim["device"]["role"], role);
    (
        claim["device"]["id"].as_str().unwrap().to_owned(),
        claim["token"].as_str().unwrap().to_owned(),
    )
}

async fn device_ids(s: &TestServer) -> BTreeSet<String> {
    let (status, list) = call(s, Method::GET, "/v1/devices", Some(OWNER), None).await;
    assert_eq!(status, 200, "{list}");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn session_count(s: &TestServer) -> usize {
    let (status, list) = call(s, Method::GET, "/v1/sessions?limit=1000", Some(OWNER), None).await;
    assert_eq!(status, 200, "{list}");
    list["data"].as_array().unwrap().len()
}

#[tokio::test]
async fn an_unpaired_peer_gets_401_saying_how_to_pair_and_changes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let (status, body) = call(&s, Method::GET, "/v1/sessions", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("omnigent share") && message.contains("omnigent login"),
        "{message}"
    );
    let (status, body) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        None,
        Some(json!({"agent_id": "echo"})),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(session_count(&s).await, 0);
    // `/v1/info` answers anyone, and says a token is needed.
    let (status, info) = call(&s, Method::GET, "/v1/info", None, None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        info["auth"],
        json!({"required": true, "roles": ["viewer", "driver", "host", "owner"], "role": null, "device": null})
    );
    // A WebSocket without a token: 401 before any upgrade.
    let ws_url = s.u("/v1/sessions/updates").replacen("http", "ws", 1);
    match tokio_tungstenite::connect_async(&ws_url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected 401 before the upgrade, got {other:?}"),
    }
}

#[tokio::test]
async fn a_loopback_peer_is_the_owner_as_before() {
    let home = tempfile::tempdir().unwrap();
    let s = TestServer::start(home.path()).await;
    let (status, info) = s.get("/v1/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["auth"]["required"], false);
    assert_eq!(info["auth"]["role"], "owner");
    let (status, code) = s.post("/v1/pairing/codes", json!({"role": "driver"})).await;
    assert_eq!(status, 201, "{code}");
    let text = code["code"].as_str().unwrap();
    assert_eq!(text.len(), 9, "{text}");
    assert!(!text.contains(['0', 'O', '1', 'I']), "{text}");
    // The server listens on loopback only: the URL is a loopback one, the code in its fragment.
    let url = code["urls"][0].as_str().unwrap();
    assert!(
        url.starts_with(&s.url) && url.ends_with(&format!("/pair#code={text}")),
        "{url}"
    );
}

#[tokio::test]
async fn a_request_a_local_reverse_proxy_forwarded_is_not_the_owner() {
    let home = tempfile::tempdir().unwrap();
    let s = TestServer::start(home.path()).await;
    for header in ["forwarded", "x-forwarded-for", "x-real-ip"] {
        let resp = s
            .client
            .post(s.u("/v1/sessions"))
            .header(header, "203.0.113.9")
            .json(&json!({"agent_id": "echo"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{header}");
    }
    let (_, list) = s.get("/v1/sessions").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_viewer_reads_and_streams_but_may_not_drive() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let (status, created) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(OWNER),
        Some(json!({"agent_id": "echo", "title": "t"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let session = created["id"].as_str().unwrap().to_owned();
    let code = code_for(
        &s,
        "viewer",
        json!({"session_id": session, "name": "Pixel 8"}),
    )
    .await;
    assert_eq!(code["session_id"], session.as_str());
    let fragment = format!(
        "/pair#code={}&session={session}",
        code["code"].as_str().unwrap()
    );
    assert!(
        code["urls"][0].as_str().unwrap().ends_with(&fragment),
        "{code}"
    );

    // Peek says what it would pair and does not use the code up.
    for _ in 0..2 {
        let (status, peek) = call(
            &s,
            Method::POST,
            "/v1/pairing/peek",
            None,
            Some(json!({"code": code["code"].as_str().unwrap().to_lowercase()})),
        )
        .await;
        assert_eq!(status, 200, "{peek}");
        assert_eq!(peek["role"], "viewer");
        assert_eq!(peek["session_id"], session.as_str());
    }
    // A browser claims: the token is a cookie (HttpOnly, SameSite=Strict), never in the body.
    let resp = s
        .client
        .post(s.u("/v1/pairing/claim"))
        .json(&json!({"code": code["code"], "client": "browser"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cookie = resp
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let claim: Value = resp.json().await.unwrap();
    assert!(claim.get("token").is_none(), "{claim}");
    assert_eq!(claim["device"]["name"], "Pixel 8");
    assert_eq!(claim["session_id"], session.as_str());
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    assert!(pair.starts_with("omnigent_device=omd_"), "{cookie}");

    let with_cookie = |m: Method, path: &str| {
        s.client
            .request(m, s.u(path))
            .header("cookie", pair.clone())
    };
    let resp = with_cookie(Method::GET, "/v1/info").send().await.unwrap();
    let info: Value = resp.json().await.unwrap();
    assert_eq!(info["auth"]["role"], "viewer");
    assert_eq!(info["auth"]["device"]["name"], "Pixel 8");
    let resp = with_cookie(Method::GET, &format!("/v1/sessions/{session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = with_cookie(Method::POST, &format!("/v1/sessions/{session}/events"))
        .json(&json!({"type": "external_conversation_item", "data": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]
        }}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(body["error"]["required_role"], "driver");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this device is a viewer"),
        "{body}"
    );
    let (_, items) = call(
        &s,
        Method::GET,
        &format!("/v1/sessions/{session}/items"),
        Some(OWNER),
        None,
    )
    .await;
    assert_eq!(items["data"].as_array().unwrap().len(), 0, "{items}");

    // Presence names the device behind the stream.
    let resp = with_cookie(
        Method::GET,
        &format!("/v1/sessions/{session}/stream?presence=true"),
    )
    .send()
    .await
    .unwrap();
    let mut sse = Sse::new(resp);
    let presence = sse.until(|kind, _| kind == "session.presence").await;
    let connections = &presence.last().unwrap().1["connections"];
    assert_eq!(connections[0]["device_id"], claim["device"]["id"]);
    assert_eq!(connections[0]["device_name"], "Pixel 8");
    assert_eq!(connections[0]["role"], "viewer");
}

#[tokio::test]
async fn wrong_expired_and_reused_codes_pair_nothing() {
    let home = tempfile::tempdir().unwrap();
    let clock = omnigent_server::ManualClock::new(1_800_000_000);
    let s = remote_server_at(home.path(), &clock).await;
    let before = device_ids(&s).await;
    let claim = |code: String| {
        let s = &s;
        async move {
            call(
                s,
                Method::POST,
                "/v1/pairing/claim",
                None,
                Some(json!({"code": code, "client": "cli"})),
            )
            .await
        }
    };
    // Wrong.
    let (status, body) = claim("ABCD-EFGH".into()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "pairing_code_invalid");
    // Reused: the second claim of a code fails the same way.
    let code = code_for(&s, "driver", json!({})).await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, first) = claim(code.clone()).await;
    assert_eq!(status, 200, "{first}");
    let after_first = device_ids(&s).await;
    let (status, body) = claim(code.clone()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "pairing_code_invalid");
    assert_eq!(device_ids(&s).await, after_first);
    // Expired: the clock passes the expiry the server stated, then the code is claimed.
    let expiring = code_for(&s, "owner", json!({"ttl_seconds": 60})).await;
    assert_eq!(expiring["expires_at"], 1_800_000_000 + 60);
    clock.advance(Duration::from_secs(60));
    let (status, body) = claim(expiring["code"].as_str().unwrap().to_owned()).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "pairing_code_invalid");
    let mut expected = before.clone();
    expected.insert(first["device"]["id"].as_str().unwrap().to_owned());
    assert_eq!(device_ids(&s).await, expected);
}

#[tokio::test]
async fn five_wrong_guesses_a_minute_then_429_per_address() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let code = code_for(&s, "owner", json!({})).await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..5 {
        let (status, body) = call(
            &s,
            Method::POST,
            if i % 2 == 0 {
                "/v1/pairing/peek"
            } else {
                "/v1/pairing/claim"
            },
            None,
            Some(json!({"code": format!("ZZZZ-ZZZ{}", i + 2), "client": "cli"})),
        )
        .await;
        assert_eq!(status, 404, "guess {i}: {body}");
    }
    // The sixth attempt is refused even with the right code, which stays unused.
    let (status, body) = call(
        &s,
        Method::POST,
        "/v1/pairing/claim",
        None,
        Some(json!({"code": code, "client": "cli"})),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_attempts");
    assert_eq!(device_ids(&s).await.len(), 1);
    // Another source address has its own budget, and the code is still there.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let resp = other
        .post(s.u("/v1/pairing/peek"))
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "owner");
}

#[tokio::test]
async fn forged_and_revoked_tokens_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let forged = "omd_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let (status, body) = call(&s, Method::GET, "/v1/sessions", Some(forged), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid"),
        "{body}"
    );
    let forged_cookie = s
        .client
        .post(s.u("/v1/sessions"))
        .header("cookie", format!("omnigent_device={forged}"))
        .json(&json!({"agent_id": "echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged_cookie.status().as_u16(), 401);

    let (id, token) = pair_cli(&s, "driver").await;
    let (status, body) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(&token),
        Some(json!({"agent_id": "echo"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &s,
        Method::DELETE,
        &format!("/v1/devices/{id}"),
        Some(OWNER),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(&token),
        Some(json!({"agent_id": "echo"})),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(session_count(&s).await, 1);
    assert!(!device_ids(&s).await.contains(&id));
    // Revoking twice: 404.
    let (status, _) = call(
        &s,
        Method::DELETE,
        &format!("/v1/devices/{id}"),
        Some(OWNER),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

/// What the viewer test checks did not change.
async fn snapshot(s: &TestServer, session: &str) -> (usize, Value, Value, Value, Value) {
    let (_, one) = call(
        s,
        Method::GET,
        &format!("/v1/sessions/{session}"),
        Some(OWNER),
        None,
    )
    .await;
    let (_, items) = call(
        s,
        Method::GET,
        &format!("/v1/sessions/{session}/items"),
        Some(OWNER),
        None,
    )
    .await;
    let (_, devices) = call(s, Method::GET, "/v1/devices", Some(OWNER), None).await;
    let (_, order) = call(s, Method::GET, "/v1/projects/order", Some(OWNER), None).await;
    (
        session_count(s).await,
        one["title"].clone(),
        items["data"].clone(),
        devices,
        order,
    )
}

/// Fill a routed path's parameters with real ids.
fn concrete(path: &str, session: &str, device: &str) -> String {
    path.replace(
        "{id}",
        if path.starts_with("/v1/devices") {
            device
        } else {
            session
        },
    )
    .replace("{host_id}", "0123456789abcdef0123456789abcdef")
    .replace("{runner_id}", "runner_a")
}

#[tokio::test]
async fn a_viewer_is_refused_on_every_route_it_may_not_use_and_nothing_changes() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let (status, created) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(OWNER),
        Some(json!({"agent_id": "echo", "title": "kept"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let session = created["id"].as_str().unwrap().to_owned();
    let (device, viewer) = pair_cli(&s, "viewer").await;
    let before = snapshot(&s, &session).await;
    let rules = omnigent_server::auth_rules();
    let mut refused = 0;
    for (method, path, need) in &rules {
        let writes = *method != "GET";
        let viewer_may = matches!(*need, "public" | "any_device" | "viewer");
        if writes {
            // Every state-changing route has a rule stricter than viewer, or is public with its own proof.
            assert!(
                !matches!(*need, "viewer" | "any_device"),
                "{method} {path} changes state but a viewer may call it"
            );
        }
        if viewer_may {
            continue;
        }
        let url = concrete(path, &session, &device);
        let body = writes.then(|| {
            json!({"name": "x", "title": "changed", "role": "owner", "order": [],
            "type": "external_conversation_item", "data": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]
            }})
        });
        let (status, answer) = call(&s, method.parse().unwrap(), &url, Some(&viewer), body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{method} {path}");
        assert_eq!(answer["error"]["required_role"], *need, "{method} {path}");
        refused += 1;
    }
    assert!(refused >= 15, "only {refused} routes were tried");
    assert_eq!(snapshot(&s, &session).await, before);
}

/// Every `.route(…)` of `server/src/http/mod.rs` with its methods, read from the source.
fn routed() -> BTreeSet<(String, String)> {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")).unwrap();
    let mut out = BTreeSet::new();
    for (at, _) in src.match_indices(".route(") {
        let rest = &src[at + ".route(".len()..];
        let mut depth = 1;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &rest[..end];
        let path = call.split('"').nth(1).expect("a path literal").to_owned();
        for method in ["get", "post", "put", "patch", "delete"] {
            let found = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0
                    || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && call.as_bytes()[i - 1] != b'_'
            });
            if found {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_has_exactly_one_rule() {
    let routes = routed();
    assert!(routes.len() > 30, "{routes:?}");
    let rules: BTreeSet<(String, String)> = omnigent_server::auth_rules()
        .into_iter()
        .map(|(m, p, _)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(
        rules.len(),
        omnigent_server::auth_rules().len(),
        "a rule is listed twice"
    );
    let missing: Vec<_> = routes.difference(&rules).collect();
    assert!(
        missing.is_empty(),
        "routes without an auth rule (add them to http/auth.rs RULES): {missing:?}"
    );
    let stale: Vec<_> = rules.difference(&routes).collect();
    assert!(
        stale.is_empty(),
        "rules for routes that do not exist: {stale:?}"
    );
}

#[tokio::test]
async fn cross_origin_writes_and_websockets_are_refused_even_with_a_token() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let (_, driver) = pair_cli(&s, "driver").await;
    let resp = s
        .client
        .post(s.u("/v1/sessions"))
        .bearer_auth(&driver)
        .header("origin", "https://evil.example")
        .json(&json!({"agent_id": "echo"}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(session_count(&s).await, 0);
    // The server's own origin (as reached) with a token may write.
    let resp = s
        .client
        .post(s.u("/v1/sessions"))
        .bearer_auth(&driver)
        .header("origin", s.url.clone())
        .json(&json!({"agent_id": "echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(session_count(&s).await, 1);
    // Without a token the same origin is not enough (and the request is 401 anyway).
    let resp = s
        .client
        .post(s.u("/v1/sessions"))
        .header("origin", s.url.clone())
        .json(&json!({"agent_id": "echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(session_count(&s).await, 1);

    // A cross-origin WebSocket with a valid token: closed 4403 before any frame.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = s.u("/v1/sessions/updates").replacen("http", "ws", 1);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    req.headers_mut()
        .insert("authorization", format!("Bearer {driver}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame");
    match frame {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(close)))) => {
            assert_eq!(u16::from(close.code), 4403)
        }
        other => panic!("expected close 4403, got {other:?}"),
    }
}

#[tokio::test]
async fn revoking_a_device_closes_its_open_stream_and_socket_within_a_second() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let (_, created) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(OWNER),
        Some(json!({"agent_id": "echo"})),
    )
    .await;
    let session = created["id"].as_str().unwrap().to_owned();
    let (device, viewer) = pair_cli(&s, "viewer").await;
    let resp = s
        .client
        .get(s.u(&format!("/v1/sessions/{session}/stream")))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    // The stream is open: its ready heartbeat arrives.
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("first chunk");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    // And the updates socket.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = s
        .u("/v1/sessions/updates")
        .replacen("http", "ws", 1)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {viewer}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");

    let (status, _) = call(
        &s,
        Method::DELETE,
        &format!("/v1/devices/{device}"),
        Some(OWNER),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let revoked = Instant::now();
    assert!(
        ends_within_a_second(&mut body).await,
        "the stream was still open 1 s after the revocation"
    );
    assert!(
        closes_within_a_second(&mut ws).await,
        "the socket was still open 1 s after the revocation"
    );
    assert!(revoked.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_server_listening_off_loopback_prints_an_owner_pairing_url_once() {
    let home = tempfile::tempdir().unwrap();
    let mut config = omnigent_server::ServerConfig::for_home(home.path());
    config.trust_loopback = false;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    config.owner_pairing_notice = Some(omnigent_server::Notice::new(move |url| {
        sink.lock().unwrap().push(url.to_owned())
    }));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(omnigent_server::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // Ready when it answers.
    let deadline = Instant::now() + WAIT;
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server never answered");
        tokio::task::yield_now().await;
    }
    let urls = seen.lock().unwrap().clone();
    assert_eq!(urls.len(), 1, "{urls:?}");
    let code = urls[0]
        .split("#code=")
        .nth(1)
        .expect("a code in the fragment")
        .to_owned();
    assert!(urls[0].contains(&format!(":{port}/pair#code=")), "{urls:?}");
    let resp = client
        .post(format!("{base}/v1/pairing/claim"))
        .json(&json!({"code": code, "client": "cli"}))
        .send()
        .await
        .unwrap();
    let (status, claim) = status_json(resp).await;
    assert_eq!(status, 200, "{claim}");
    assert_eq!(claim["device"]["role"], "owner");
    let token = claim["token"].as_str().unwrap();
    let resp = client
        .get(format!("{base}/v1/devices"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // A LAN address of this machine is a Host the server answers to.
    let resp = client
        .get(format!("{base}/health"))
        .header("host", format!("192.168.77.1:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// Everything the server logs in this test binary (debug and up).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_and_pairing_codes_never_reach_the_log() {
    let logs = captured_logs();
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let mut secrets = vec![OWNER.to_owned()];
    let code = code_for(&s, "driver", json!({})).await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    secrets.push(code.clone());
    secrets.push(code.replace('-', ""));
    call(
        &s,
        Method::POST,
        "/v1/pairing/peek",
        None,
        Some(json!({"code": code})),
    )
    .await;
    let (status, claim) = call(
        &s,
        Method::POST,
        "/v1/pairing/claim",
        None,
        Some(json!({"code": code, "client": "cli"})),
    )
    .await;
    assert_eq!(status, 200);
    let token = claim["token"].as_str().unwrap().to_owned();
    secrets.push(token.clone());
    let (status, _) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(&token),
        Some(json!({"agent_id": "echo"})),
    )
    .await;
    assert_eq!(status, 201);
    // A failing claim of a used code, a forged token, a revoked one.
    call(
        &s,
        Method::POST,
        "/v1/pairing/claim",
        None,
        Some(json!({"code": code, "client": "cli"})),
    )
    .await;
    let id = claim["device"]["id"].as_str().unwrap();
    call(
        &s,
        Method::DELETE,
        &format!("/v1/devices/{id}"),
        Some(OWNER),
        None,
    )
    .await;
    call(&s, Method::GET, "/v1/sessions", Some(&token), None).await;
    let (_, _) = s.shutdown().await;
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        text.contains("paired a device"),
        "the log was not captured: {text}"
    );
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret is in the log");
    }
}

async fn host_tunnel(
    s: &TestServer,
    host_id: &str,
    token: Option<&str>,
) -> Result<common::raw_host::Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = s
        .u(&format!("/v1/hosts/{host_id}/tunnel"))
        .replacen("http", "ws", 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "omnigent://internal".parse().unwrap());
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test]
async fn a_host_device_registers_keeps_its_id_and_is_cut_off_when_revoked() {
    let home = tempfile::tempdir().unwrap();
    let registry = omnigent_tunnel::host::HostRegistry::default();
    let shared = registry.clone();
    let s = TestServer::start_with(home.path(), move |c| {
        c.trust_loopback = false;
        c.owner_token = Some(Secret(OWNER.to_owned()));
        c.host_registry = shared;
    })
    .await;
    let host_id = "0123456789abcdef0123456789abcdef";
    // No token, or a driver token: refused before the upgrade.
    assert_eq!(host_tunnel(&s, host_id, None).await.err(), Some(401));
    let (_, driver) = pair_cli(&s, "driver").await;
    assert_eq!(
        host_tunnel(&s, host_id, Some(&driver)).await.err(),
        Some(403)
    );
    assert!(!registry.is_online(host_id));
    // A host token registers.
    let (device, host) = pair_cli(&s, "host").await;
    let mut ws = host_tunnel(&s, host_id, Some(&host))
        .await
        .expect("upgrade");
    common::raw_host::send(&mut ws, common::raw_host::python_hello()).await;
    let live = registry.wait_for_host(host_id, WAIT).await.expect("online");
    // A host role may do nothing else.
    let (status, _) = call(&s, Method::GET, "/v1/sessions", Some(&host), None).await;
    assert_eq!(status, 403);
    // Another host device cannot take the live host id over.
    let (_, other) = pair_cli(&s, "host").await;
    assert_eq!(
        host_tunnel(&s, host_id, Some(&other)).await.err(),
        Some(409)
    );
    assert_eq!(
        registry.get(host_id).unwrap().generation(),
        live.generation()
    );
    // Revoked: the tunnel closes.
    let (status, _) = call(
        &s,
        Method::DELETE,
        &format!("/v1/devices/{device}"),
        Some(OWNER),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(
        closes_within_a_second(&mut ws).await,
        "the host tunnel was still open 1 s after the revocation"
    );
}

#[tokio::test]
async fn malformed_pairing_input_and_credentials_are_refused_cleanly() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    // Not JSON, missing fields, a bad role or ttl: 4xx, no device.
    let resp = s
        .client
        .post(s.u("/v1/pairing/claim"))
        .header("content-type", "text/plain")
        .body("ABCD-EFGH")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let (status, _) = call(
        &s,
        Method::POST,
        "/v1/pairing/claim",
        None,
        Some(json!({"code": "ABCD-EFGH"})),
    )
    .await;
    assert_eq!(status, 400);
    for body in [
        json!({"role": "admin"}),
        json!({"role": "viewer", "ttl_seconds": 0}),
        json!({"role": "viewer", "ttl_seconds": 100000}),
    ] {
        let (status, answer) = call(
            &s,
            Method::POST,
            "/v1/pairing/codes",
            Some(OWNER),
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
    }
    let (status, _) = call(
        &s,
        Method::POST,
        "/v1/pairing/codes",
        Some(OWNER),
        Some(json!({"role": "viewer", "session_id": "0123456789abcdef0123456789abcdef"})),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(device_ids(&s).await.len(), 1);
    // A huge name with control characters is cut and cleaned.
    let code = code_for(&s, "viewer", json!({})).await;
    let name = format!("a\u{7}b\n{}", "x".repeat(10_000));
    let (status, claim) = call(
        &s,
        Method::POST,
        "/v1/pairing/claim",
        None,
        Some(json!({"code": code["code"], "name": name, "client": "cli"})),
    )
    .await;
    assert_eq!(status, 200, "{claim}");
    let kept = claim["device"]["name"].as_str().unwrap();
    assert!(
        kept.starts_with("abxx") && kept.chars().count() <= 100,
        "{kept}"
    );
    let token = claim["token"].as_str().unwrap();
    // Odd credentials: an empty bearer, another scheme, the token among other cookies.
    for auth in ["Bearer ", "Bearer", &format!("Basic {token}")] {
        let resp = s
            .client
            .get(s.u("/v1/sessions"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{auth}");
    }
    let resp = s
        .client
        .get(s.u("/v1/sessions"))
        .header(
            "cookie",
            format!("theme=dark; omnigent_device={token}; other=1"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Renaming: empty refused, unknown device 404, then a real rename.
    let id = claim["device"]["id"].as_str().unwrap();
    let (status, _) = call(
        &s,
        Method::PATCH,
        &format!("/v1/devices/{id}"),
        Some(OWNER),
        Some(json!({"name": "  "})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        &s,
        Method::PATCH,
        "/v1/devices/dev_nope",
        Some(OWNER),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, device) = call(
        &s,
        Method::PATCH,
        &format!("/v1/devices/{id}"),
        Some(OWNER),
        Some(json!({"name": "Tablet"})),
    )
    .await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["name"], "Tablet");
    let resp = s
        .client
        .get(s.u("/v1/info"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let info: Value = resp.json().await.unwrap();
    assert_eq!(info["auth"]["device"]["name"], "Tablet");
}

/// Waits until `ws` closes (or fails); false if it is still open after a second.
async fn closes_within_a_second<E>(
    ws: &mut (
             impl futures_util::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, E>> + Unpin
         ),
) -> bool {
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// Waits until `body` ends (or fails); false if it is still open after a second.
async fn ends_within_a_second(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
) -> bool {
    tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_device_paired_for_a_limited_time_expires_then_is_refused_saying_so_and_its_stream_ends()
{
    let home = tempfile::tempdir().unwrap();
    let start = 1_800_000_000;
    let clock = omnigent_server::ManualClock::new(start);
    let s = remote_server_at(home.path(), &clock).await;
    let (_, created) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(OWNER),
        Some(json!({"agent_id": "echo", "title": "kept"})),
    )
    .await;
    let session = created["id"].as_str().unwrap().to_owned();
    // Out of range: refused, no code.
    for ttl in [json!(0), json!(3650u64 * 24 * 3600 + 1)] {
        let (status, body) = call(
            &s,
            Method::POST,
            "/v1/pairing/codes",
            Some(OWNER),
            Some(json!({"role": "driver", "device_ttl_seconds": ttl})),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("device_ttl_seconds"),
            "{body}"
        );
    }
    let month = 30 * 24 * 3600;
    let code = code_for(&s, "driver", json!({"device_ttl_seconds": month})).await;
    assert_eq!(code["device_ttl_seconds"], month, "{code}");
    let (status, peek) = call(
        &s,
        Method::POST,
        "/v1/pairing/peek",
        None,
        Some(json!({"code": code["code"]})),
    )
    .await;
    assert_eq!(status, 200, "{peek}");
    assert_eq!(peek["device_ttl_seconds"], month, "{peek}");
    let (status, claim) = call(
        &s,
        Method::POST,
        "/v1/pairing/claim",
        None,
        Some(json!({"code": code["code"], "name": "for a month", "client": "cli"})),
    )
    .await;
    assert_eq!(status, 200, "{claim}");
    assert_eq!(claim["device"]["expires_at"], start + month, "{claim}");
    let token = claim["token"].as_str().unwrap().to_owned();
    let id = claim["device"]["id"].as_str().unwrap().to_owned();
    // A code without a lifetime pairs a device that never expires.
    let (_, forever) = pair_cli(&s, "viewer").await;
    let (_, list) = call(&s, Method::GET, "/v1/devices", Some(OWNER), None).await;
    let expiry_of = |list: &Value, id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .map(|d| d["expires_at"].clone())
    };
    assert_eq!(expiry_of(&list, &id), Some(json!(start + month)), "{list}");

    // Until then it works, and opens a stream and an updates socket.
    let (status, _) = call(&s, Method::GET, "/v1/sessions", Some(&token), None).await;
    assert_eq!(status, 200);
    let resp = s
        .client
        .get(s.u(&format!("/v1/sessions/{session}/stream")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(WAIT, body.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = s
        .u("/v1/sessions/updates")
        .replacen("http", "ws", 1)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    clock.advance(Duration::from_secs(u64::try_from(month).unwrap() - 1));
    let (status, _) = call(&s, Method::GET, "/v1/sessions", Some(&token), None).await;
    assert_eq!(status, 200, "a second before its expiry");

    // Expired: the stream and the socket end, and every request is 401 saying so and how to pair again.
    clock.advance(Duration::from_secs(1));
    assert!(
        ends_within_a_second(&mut body).await,
        "the stream outlived the expiry"
    );
    assert!(
        closes_within_a_second(&mut ws).await,
        "the socket outlived the expiry"
    );
    let (status, body) = call(&s, Method::GET, "/v1/sessions", Some(&token), None).await;
    assert_eq!(status, 401, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("expired at 2027-02-14T08:00:00Z")
            && message.contains("pair it again")
            && message.contains("omnigent share"),
        "{message}"
    );
    let before = snapshot(&s, &session).await;
    let (status, _) = call(
        &s,
        Method::POST,
        &format!("/v1/sessions/{session}/events"),
        Some(&token),
        Some(json!({"type": "external_conversation_item", "data": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "late"}]
        }})),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(&token),
        Some(json!({"agent_id": "echo"})),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(snapshot(&s, &session).await, before);
    // The device without a lifetime, and the owner, are untouched.
    let (status, _) = call(&s, Method::GET, "/v1/sessions", Some(&forever), None).await;
    assert_eq!(status, 200);
    let (_, list) = call(&s, Method::GET, "/v1/devices", Some(OWNER), None).await;
    assert_eq!(expiry_of(&list, &id), Some(json!(start + month)), "{list}");
}

#[tokio::test]
async fn an_unpaired_peer_learns_only_the_status_from_health_and_nothing_private_from_info() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let (_, created) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(OWNER),
        Some(json!({"agent_id": "echo"})),
    )
    .await;
    let session = created["id"].as_str().unwrap().to_owned();
    let probe = format!("/health?session_id={session}&session_ids={session},nope");
    let (_, host) = pair_cli(&s, "host").await;
    for token in [
        None,
        Some("omd_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some(host.as_str()),
    ] {
        let resp = s
            .client
            .get(s.u(&probe))
            .header(
                "authorization",
                token.map_or(String::new(), |t| format!("Bearer {t}")),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().await.unwrap(), r#"{"status":"ok"}"#);
        let (status, info) = call(&s, Method::GET, "/v1/info", token, None).await;
        assert_eq!(status, 200, "{info}");
        for private in ["pid", "database", "started_at", "session_count", "storage"] {
            assert!(info[private].is_null(), "{private} told: {info}");
        }
        assert_eq!(info["implementation"], "omnigent-rs");
        assert_eq!(info["auth"]["required"], true);
    }
    // A device that may read sessions gets the details.
    let (_, viewer) = pair_cli(&s, "viewer").await;
    let (status, health) = call(&s, Method::GET, &probe, Some(&viewer), None).await;
    assert_eq!(status, 200);
    assert_eq!(health["session"]["id"], session.as_str(), "{health}");
    assert!(health["sessions"][&session].is_object(), "{health}");
    let (_, info) = call(&s, Method::GET, "/v1/info", Some(&viewer), None).await;
    assert_eq!(info["session_count"], 1, "{info}");
    assert!(info["pid"].is_u64(), "{info}");
}

#[tokio::test]
async fn a_revoked_browser_cookie_is_refused_and_changes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let s = remote_server(home.path()).await;
    let (_, created) = call(
        &s,
        Method::POST,
        "/v1/sessions",
        Some(OWNER),
        Some(json!({"agent_id": "echo", "title": "kept"})),
    )
    .await;
    let session = created["id"].as_str().unwrap().to_owned();
    let code = code_for(&s, "driver", json!({})).await;
    let resp = s
        .client
        .post(s.u("/v1/pairing/claim"))
        .json(&json!({"code": code["code"], "client": "browser"}))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let claim: Value = resp.json().await.unwrap();
    let id = claim["device"]["id"].as_str().unwrap().to_owned();
    let rename = |cookie: String| {
        s.client
            .patch(s.u(&format!("/v1/sessions/{session}")))
            .header("cookie", cookie)
            .json(&json!({"title": "changed"}))
            .send()
    };
    // Its own origin with the cookie may write; once revoked the same request is 401.
    let (status, _) = call(
        &s,
        Method::DELETE,
        &format!("/v1/devices/{id}"),
        Some(OWNER),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let before = snapshot(&s, &session).await;
    let (status, body) = status_json(rename(cookie.clone()).await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid"),
        "{body}"
    );
    let resp = s
        .client
        .post(s.u(&format!("/v1/sessions/{session}/events")))
        .header("cookie", cookie.clone())
        .json(&json!({"type": "external_conversation_item", "data": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(snapshot(&s, &session).await, before);
    assert_eq!(before.1, "kept");
}
