//! The HTTP API against a real server on port 0 over a real SQLite file in a temp OMNIGENT_HOME.

mod common;

use std::collections::HashSet;

use common::TestServer;
use omnigent_server::{OpenError, ServerConfig, open_store};
use serde_json::{Value, json};

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn boot_endpoints_answer_the_reference_shapes() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;

    let (s, health) = srv.get("/health").await;
    assert_eq!((s, health.clone()), (200, json!({"status": "ok"})));

    let (s, info) = srv.get("/v1/info").await;
    assert_eq!(s, 200);
    assert_eq!(info["implementation"], "omnigent-rs");
    assert_eq!(info["single_user"], true);
    assert_eq!(info["accounts_enabled"], false);
    assert_eq!(info["login_url"], Value::Null);
    assert_eq!(info["pid"], std::process::id());
    assert_eq!(info["session_count"], 0);
    let db = info["database"].as_str().expect("database");
    assert!(db.ends_with("data/omnigent.db"), "{db}");
    assert!(std::path::Path::new(db).starts_with(home.path()));

    assert_eq!(
        srv.get("/v1/me").await,
        (200, json!({"user_id": "local", "is_admin": true}))
    );
    assert_eq!(srv.get("/v1/runners").await, (200, json!({"data": []})));
    assert_eq!(srv.get("/v1/hosts").await, (200, json!({"hosts": []})));

    let (s, agents) = srv.get("/v1/agents").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = agents["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "echo",
            "openai",
            "anthropic",
            "exec",
            "claude-sdk",
            "codex",
            "pi"
        ]
    );
    assert_eq!(agents["object"], "list");
    assert_eq!(agents["has_more"], false);
    let (_, page) = srv.get("/v1/agents?limit=2").await;
    assert_eq!(page["data"].as_array().expect("data").len(), 2);
    assert_eq!(page["has_more"], true);
    let (_, rest) = srv
        .get(&format!(
            "/v1/agents?after={}",
            page["last_id"].as_str().expect("last")
        ))
        .await;
    let rest_names: Vec<&str> = rest["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        rest_names,
        ["anthropic", "exec", "claude-sdk", "codex", "pi"]
    );
}

#[tokio::test]
async fn session_crud_round_trip() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;

    let (s, created) = srv
        .post(
            "/v1/sessions",
            json!({
                "agent_id": "echo",
                "title": "first",
                "labels": {"a": "1", "b": "2"},
                "initial_items": [{"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}}],
                "workspace": "/tmp/w",
            }),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(created["status"], "idle");
    assert_eq!(created["agent_name"], "echo");
    assert_eq!(created["host_id"], Value::Null);
    assert_eq!(created["workspace"], "/tmp/w");
    assert_eq!(created["runner_id"], Value::Null);
    assert_eq!(created["root_conversation_id"], id.as_str());
    assert_eq!(created["items"][0]["data"]["content"][0]["text"], "hi");

    // Read back, also through a legacy prefixed id.
    let (s, got) = srv.get(&format!("/v1/sessions/conv_{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(got["title"], "first");
    assert_eq!(got["labels"], json!({"a": "1", "b": "2"}));
    let (_, no_items) = srv
        .get(&format!("/v1/sessions/{id}?include_items=false"))
        .await;
    assert_eq!(no_items["items"], json!([]));

    // PATCH merges labels, a null label removes it, model_override "default" clears.
    let (s, patched) = srv
        .patch(
            &format!("/v1/sessions/{id}"),
            json!({"title": "renamed", "labels": {"b": null, "c": "3"}, "model_override": "gpt-x", "external_session_id": "ext1"}),
        )
        .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["title"], "renamed");
    assert_eq!(patched["labels"], json!({"a": "1", "c": "3"}));
    assert_eq!(patched["model_override"], "gpt-x");
    let (_, cleared) = srv
        .patch(
            &format!("/v1/sessions/{id}"),
            json!({"model_override": "default"}),
        )
        .await;
    assert_eq!(cleared["model_override"], Value::Null);
    // external_session_id is write-once.
    let (s, err) = srv
        .patch(
            &format!("/v1/sessions/{id}"),
            json!({"external_session_id": "ext2"}),
        )
        .await;
    assert_eq!(s, 400, "{err}");
    assert_eq!(err["error"]["code"], "invalid_input");
    // Binding an unknown runner is refused like omnigent does (no runner is registered).
    let (s, err) = srv
        .patch(
            &format!("/v1/sessions/{id}"),
            json!({"runner_id": "runner_x"}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("runner_x")
    );

    // Archive hides it from the default list.
    srv.patch(&format!("/v1/sessions/{id}"), json!({"archived": true}))
        .await;
    let (_, list) = srv.get("/v1/sessions").await;
    assert!(ids(&list).is_empty());
    let (_, list) = srv.get("/v1/sessions?include_archived=true").await;
    assert_eq!(ids(&list), std::slice::from_ref(&id));

    let (s, del) = srv.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!((s, del), (200, json!({"id": id, "deleted": true})));
    let (s, err) = srv.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(s, 404);
    assert_eq!(
        err,
        json!({"error": {"code": "not_found", "message": "Session not found"}})
    );
    let (s, _) = srv.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(s, 404, "deleting twice is a 404");
}

#[tokio::test]
async fn session_list_pagination_edges() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;

    // Empty.
    let (s, empty) = srv.get("/v1/sessions").await;
    assert_eq!(s, 200);
    assert_eq!(
        empty,
        json!({"object": "list", "data": [], "first_id": null, "last_id": null, "has_more": false})
    );

    let mut created = Vec::new();
    for i in 0..10 {
        created.push(srv.create_session(&format!("s{i}")).await);
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    // Exact page boundary: 10 sessions, limit 5 → two full pages, the second with has_more=false.
    let (_, p1) = srv.get("/v1/sessions?limit=5").await;
    assert_eq!(ids(&p1), newest_first[..5]);
    assert_eq!(p1["has_more"], true);
    assert_eq!(p1["first_id"], newest_first[0].as_str());
    assert_eq!(p1["last_id"], newest_first[4].as_str());
    let (_, p2) = srv
        .get(&format!("/v1/sessions?limit=5&after={}", newest_first[4]))
        .await;
    assert_eq!(ids(&p2), newest_first[5..]);
    assert_eq!(p2["has_more"], false);
    let (_, p3) = srv
        .get(&format!("/v1/sessions?limit=5&after={}", newest_first[9]))
        .await;
    assert!(ids(&p3).is_empty());
    assert_eq!(p3["has_more"], false);
    let (_, all) = srv.get("/v1/sessions?limit=10").await;
    assert_eq!(all["has_more"], false, "exactly limit rows: no more");

    // before: the page just before a cursor, in list order.
    let (_, b) = srv
        .get(&format!("/v1/sessions?limit=3&before={}", newest_first[5]))
        .await;
    assert_eq!(ids(&b), newest_first[2..5]);
    assert_eq!(b["has_more"], true);
    let (_, b0) = srv
        .get(&format!("/v1/sessions?before={}", newest_first[0]))
        .await;
    assert!(ids(&b0).is_empty());
    // after + before together: the window between.
    let (_, win) = srv
        .get(&format!(
            "/v1/sessions?after={}&before={}",
            newest_first[1], newest_first[5]
        ))
        .await;
    assert_eq!(ids(&win), newest_first[2..5]);

    // Ascending order, and sort_by=updated_at after a touch moves a session.
    let (_, asc) = srv.get("/v1/sessions?order=asc&limit=3").await;
    assert_eq!(ids(&asc), created[..3]);
    srv.append_text(&created[0], "touch").await;
    let (_, upd) = srv.get("/v1/sessions?sort_by=updated_at&limit=1").await;
    assert_eq!(ids(&upd), [created[0].clone()]);

    // A deleted cursor is a clear 400, not an empty page or a 500.
    srv.delete(&format!("/v1/sessions/{}", newest_first[4]))
        .await;
    let (s, err) = srv
        .get(&format!("/v1/sessions?after={}", newest_first[4]))
        .await;
    assert_eq!(s, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("deleted")
    );
    // A legacy-prefixed cursor works.
    let (s, p) = srv
        .get(&format!(
            "/v1/sessions?limit=2&after=conv_{}",
            newest_first[0]
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(ids(&p), newest_first[1..3]);
}

#[tokio::test]
async fn search_uses_titles_and_item_text() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let a = srv.create_session("refactor the parser").await;
    let b = srv.create_session("weekly notes").await;
    let c = srv.create_session("misc").await;
    srv.append_text(&b, "the flamingo migration is done").await;

    let search = |q: &str| {
        let srv = &srv;
        let q = q.to_owned();
        async move {
            let (s, page) = srv.get(&format!("/v1/sessions?search_query={q}")).await;
            assert_eq!(s, 200, "{page}");
            ids(&page).into_iter().collect::<HashSet<_>>()
        }
    };
    assert_eq!(search("parser").await, HashSet::from([a.clone()]));
    assert_eq!(
        search("pars").await,
        HashSet::from([a.clone()]),
        "prefix match"
    );
    assert_eq!(
        search("flamingo").await,
        HashSet::from([b.clone()]),
        "item text"
    );
    assert_eq!(search("the").await, HashSet::from([a.clone(), b.clone()]));
    assert!(search("absent").await.is_empty());
    // FTS syntax in the input is neutralised, never a 500.
    assert!(search("%22%20OR%20*").await.is_empty());
    assert!(search("NEAR(").await.is_empty());
    // Input with no words is literal: `%` and `_` are not wildcards, and never mean "no filter".
    assert!(search("%25").await.is_empty(), "a lone %");
    assert!(search("%").await.is_empty(), "a raw %");
    assert!(search("_").await.is_empty(), "a lone _");
    assert!(search("%25%25%20_%25").await.is_empty(), "%% _%");
    assert!(search("%22").await.is_empty(), "a lone quote");
    assert_eq!(
        search("notes%25").await,
        HashSet::from([b.clone()]),
        "a word keeps matching"
    );
    // Renaming reindexes the title; deleting removes it from results.
    srv.patch(
        &format!("/v1/sessions/{c}"),
        json!({"title": "parser notes"}),
    )
    .await;
    assert_eq!(
        search("parser").await,
        HashSet::from([a.clone(), c.clone()])
    );
    srv.delete(&format!("/v1/sessions/{b}")).await;
    assert!(search("flamingo").await.is_empty());
}

#[tokio::test]
async fn items_pagination_and_fork() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let id = srv.create_session("items").await;
    let (s, empty) = srv.get(&format!("/v1/sessions/{id}/items")).await;
    assert_eq!(s, 200);
    assert_eq!(empty["data"], json!([]));
    assert_eq!(empty["has_more"], false);

    let mut item_ids = Vec::new();
    for i in 0..7 {
        item_ids.push(srv.append_text(&id, &format!("text {i}")).await);
    }
    let (_, p1) = srv.get(&format!("/v1/sessions/{id}/items?limit=3")).await;
    assert_eq!(ids(&p1), item_ids[..3]);
    assert_eq!(p1["has_more"], true);
    let item = &p1["data"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant", "items are flat");
    assert_eq!(item["status"], "completed");
    assert!(item["created_at"].is_i64());
    let (_, p2) = srv
        .get(&format!(
            "/v1/sessions/{id}/items?limit=4&after={}",
            item_ids[2]
        ))
        .await;
    assert_eq!(ids(&p2), item_ids[3..]);
    assert_eq!(p2["has_more"], false);
    let (_, desc) = srv
        .get(&format!("/v1/sessions/{id}/items?order=desc&limit=2"))
        .await;
    assert_eq!(ids(&desc), [item_ids[6].clone(), item_ids[5].clone()]);
    let (_, before) = srv
        .get(&format!(
            "/v1/sessions/{id}/items?before={}&limit=2",
            item_ids[3]
        ))
        .await;
    assert_eq!(ids(&before), item_ids[1..3]);
    let (s, _) = srv
        .get(&format!(
            "/v1/sessions/{id}/items?after=0123456789abcdef0123456789abcdef"
        ))
        .await;
    assert_eq!(s, 400, "unknown item cursor");
    let (s, _) = srv
        .get("/v1/sessions/0123456789abcdef0123456789abcdef/items")
        .await;
    assert_eq!(s, 404);

    // Fork copies the items with new ids and is not bound to a runner.
    let (s, fork) = srv
        .post(
            &format!("/v1/sessions/{id}/fork"),
            json!({"title": "forked"}),
        )
        .await;
    assert_eq!(s, 201, "{fork}");
    let fork_id = fork["id"].as_str().expect("id");
    assert_ne!(fork_id, id);
    assert_eq!(fork["title"], "forked");
    assert_eq!(fork["status"], "idle");
    assert_eq!(fork["runner_id"], Value::Null);
    let (_, fitems) = srv
        .get(&format!("/v1/sessions/{fork_id}/items?limit=100"))
        .await;
    let copied = ids(&fitems);
    assert_eq!(copied.len(), 7);
    assert!(
        copied.iter().all(|c| !item_ids.contains(c)),
        "fresh item ids"
    );
    assert_eq!(fitems["data"][6]["content"][0]["text"], "text 6");
    // Fork with an empty body (no content type) works; unknown up_to_response_id is a 400.
    let resp = srv
        .client
        .post(srv.u(&format!("/v1/sessions/{id}/fork")))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 201);
    let (s, _) = srv
        .post(
            &format!("/v1/sessions/{id}/fork"),
            json!({"up_to_response_id": "resp_nope"}),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn health_reports_session_liveness() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let id = srv.create_session("h").await;
    let (s, h) = srv.get(&format!("/health?session_id={id}")).await;
    assert_eq!(s, 200);
    assert_eq!(
        h,
        json!({"status": "ok", "session": {"id": id, "runner_online": false, "host_online": null, "host_version": null}})
    );
    let missing = "0123456789abcdef0123456789abcdef";
    let (_, h) = srv
        .get(&format!("/health?session_ids={id},{missing}"))
        .await;
    assert_eq!(h["sessions"][&id]["runner_online"], false);
    // omnigent reports an unknown id as runner_online:true, host_online:null.
    assert_eq!(
        h["sessions"][missing],
        json!({"runner_online": true, "host_online": null, "host_version": null})
    );
}

#[tokio::test]
async fn post_events_by_type() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let id = srv.create_session("ev").await;
    let ev = |body: Value| {
        let srv = &srv;
        let id = id.clone();
        async move { srv.post(&format!("/v1/sessions/{id}/events"), body).await }
    };
    // A message needs a runner: 503 runner_unavailable with what to do, and nothing is persisted.
    let (s, err) = ev(json!({"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": "x"}]}})).await;
    assert_eq!(s, 503, "{err}");
    assert_eq!(err["error"]["code"], "runner_unavailable");
    let (_, items) = srv.get(&format!("/v1/sessions/{id}/items")).await;
    assert_eq!(items["data"], json!([]));
    assert_eq!(
        ev(json!({"type": "interrupt", "data": {}})).await,
        (202, json!({"queued": false}))
    );
    assert_eq!(
        ev(json!({"type": "interrupt"})).await,
        (202, json!({"queued": false}))
    );
    assert_eq!(
        ev(json!({"type": "stop_session"})).await,
        (202, json!({"queued": false}))
    );
    let (s, body) =
        ev(json!({"type": "external_session_status", "data": {"status": "running"}})).await;
    assert_eq!((s, body), (202, json!({"queued": false})));
    let (_, snap) = srv.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(snap["status"], "running", "status is persisted");
    let (_, list) = srv.get("/v1/sessions").await;
    assert_eq!(list["data"][0]["status"], "running");
    for body in [
        json!({"type": "external_output_text_delta", "data": {"delta": "d"}}),
        json!({"type": "external_output_reasoning_delta", "data": {"delta": "r"}}),
        json!({"type": "external_tool_output_delta", "data": {"call_id": "c", "delta": "o"}}),
        json!({"type": "external_session_usage", "data": {"context_tokens": 3}}),
        json!({"type": "external_model_change", "data": {"model": "m"}}),
        json!({"type": "external_session_interrupted", "data": {}}),
    ] {
        let (s, resp) = ev(body.clone()).await;
        assert_eq!((s, resp), (202, json!({"queued": false})), "{body}");
    }
    let item_id = "fc_0123456789abcdef0123456789abcdef";
    let (s, body) = ev(json!({"type": "external_conversation_item", "data": {"item": {
        "id": item_id, "type": "function_call", "name": "shell", "call_id": "c1", "arguments": "{}"
    }}}))
    .await;
    assert_eq!(
        (s, body),
        (
            202,
            json!({"queued": false, "item_id": "0123456789abcdef0123456789abcdef"})
        )
    );
    let (s, body) = ev(json!({"type": "external_conversation_item", "data": {"item": {
        "id": item_id, "type": "function_call", "name": "shell", "call_id": "c1", "arguments": "{}"
    }}}))
    .await;
    assert_eq!(s, 409, "same item id twice: {body}");
    assert_eq!(body["error"]["code"], "already_exists");
}

/// Every malformed input gets a 4xx JSON error that says what to fix; never a 500 or a hang.
#[tokio::test]
async fn malformed_inputs_table() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| c.max_body_bytes = 64 * 1024).await;
    let id = srv.create_session("bad").await;
    let events = format!("/v1/sessions/{id}/events");
    let big = "x".repeat(70 * 1024);
    let session_path = format!("/v1/sessions/{id}");
    let many_ids = format!("/health?session_ids={}", vec!["a"; 501].join(","));
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<&'a str>,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        // (method, path, body, content-type, status, code, message contains)
        (
            "POST",
            "/v1/sessions",
            "{not json".into(),
            Some("application/json"),
            400,
            "invalid_input",
            "not valid JSON",
        ),
        (
            "POST",
            "/v1/sessions",
            "{}".into(),
            Some("application/json"),
            400,
            "invalid_input",
            "agent_id is required",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"agent_id":"nope"}"#.into(),
            Some("application/json"),
            404,
            "not_found",
            "GET /v1/agents",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"agent_id":"echo","labels":{"a":1}}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "labels",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"agent_id":"echo","host_id":"h"}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "workspace is required",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"agent_id":"echo"}"#.into(),
            Some("text/plain"),
            415,
            "unsupported_media_type",
            "Content-Type: application/json",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"agent_id":"echo"}"#.into(),
            None,
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "POST",
            "/v1/sessions",
            format!(r#"{{"agent_id":"echo","title":"{big}"}}"#),
            Some("application/json"),
            413,
            "payload_too_large",
            "larger than 65536",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"agent_id":"echo","initial_items":[{"type":"message","data":{"content":[]}}]}"#
                .into(),
            Some("application/json"),
            400,
            "invalid_input",
            "initial_items[0]",
        ),
        (
            "POST",
            "/v1/sessions",
            r#"{"agent_id":"echo","terminal_launch_args":["a\u0000b"]}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "NUL",
        ),
        (
            "POST",
            &events,
            r#"{"type":"teleport"}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "unknown event type `teleport`",
        ),
        (
            "POST",
            &events,
            r#"{"data":{}}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "type",
        ),
        (
            "POST",
            &events,
            r#"{"type":"interrupt","data":[1]}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "must be a JSON object",
        ),
        (
            "POST",
            &events,
            r#"{"type":"message","data":{"role":"robot","content":"x"}}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "role `robot`",
        ),
        (
            "POST",
            &events,
            r#"{"type":"external_output_text_delta","data":{}}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "data.delta",
        ),
        (
            "POST",
            &events,
            r#"{"type":"external_session_status","data":{"status":"asleep"}}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "asleep",
        ),
        (
            "POST",
            &events,
            r#"{"type":"external_conversation_item","data":{"type":"spell"}}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "spell",
        ),
        (
            "POST",
            &events,
            r#"{"type":"external_conversation_item","data":{"type":"function_call","name":"x"}}"#
                .into(),
            Some("application/json"),
            400,
            "invalid_input",
            "call_id",
        ),
        (
            "POST",
            &events,
            "[]".into(),
            Some("application/json"),
            400,
            "invalid_input",
            "not valid JSON",
        ),
        (
            "POST",
            "/v1/sessions/0123456789abcdef0123456789abcdef/events",
            r#"{"type":"interrupt"}"#.into(),
            Some("application/json"),
            404,
            "not_found",
            "Session not found",
        ),
        (
            "POST",
            "/v1/sessions/not-an-id/events",
            r#"{"type":"interrupt"}"#.into(),
            Some("application/json"),
            404,
            "not_found",
            "Session not found",
        ),
        (
            "GET",
            "/v1/sessions?limit=0",
            String::new(),
            None,
            400,
            "invalid_input",
            "limit=0",
        ),
        (
            "GET",
            "/v1/sessions?limit=5000",
            String::new(),
            None,
            400,
            "invalid_input",
            "1 to 1000",
        ),
        (
            "GET",
            "/v1/sessions?limit=abc",
            String::new(),
            None,
            400,
            "invalid_input",
            "limit",
        ),
        (
            "GET",
            "/v1/sessions?order=sideways",
            String::new(),
            None,
            400,
            "invalid_input",
            "order",
        ),
        (
            "GET",
            "/v1/sessions?sort_by=size",
            String::new(),
            None,
            400,
            "invalid_input",
            "sort_by",
        ),
        (
            "GET",
            "/v1/sessions?after=zzz",
            String::new(),
            None,
            400,
            "invalid_input",
            "is not an id",
        ),
        (
            "GET",
            "/v1/sessions/nothex",
            String::new(),
            None,
            404,
            "not_found",
            "Session not found",
        ),
        (
            "GET",
            "/v1/nowhere",
            String::new(),
            None,
            404,
            "not_found",
            "no route GET /v1/nowhere",
        ),
        (
            "PUT",
            "/v1/sessions",
            String::new(),
            None,
            405,
            "method_not_allowed",
            "PUT",
        ),
        (
            "PATCH",
            &session_path,
            r#"{"archived":"yes"}"#.into(),
            Some("application/json"),
            400,
            "invalid_input",
            "archived",
        ),
        (
            "GET",
            &many_ids,
            String::new(),
            None,
            400,
            "invalid_input",
            "at most 500",
        ),
    ];
    for (method, path, body, ctype, status, code, needle) in cases {
        let mut req = srv
            .client
            .request(method.parse().expect("method"), srv.u(path));
        if let Some(ct) = ctype {
            req = req.header("content-type", ct);
        }
        if !body.is_empty() {
            req = req.body(body.clone());
        }
        let resp = req.send().await.expect("send");
        let (got_status, got) = common::status_json(resp).await;
        let short: String = body.chars().take(80).collect();
        assert_eq!(got_status, status, "{method} {path} {short}: {got}");
        assert_eq!(got["error"]["code"], code, "{method} {path} {short}: {got}");
        let message = got["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(needle),
            "{method} {path} {short}: `{message}` lacks `{needle}`"
        );
    }
    // Last-Event-ID that is not a number.
    let resp = srv
        .client
        .get(srv.u(&format!("/v1/sessions/{id}/stream")))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .expect("send");
    let (s, err) = common::status_json(resp).await;
    assert_eq!(s, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("Last-Event-ID")
    );
    // A Content-Length beyond the cap is refused before the body is read.
    let resp = srv
        .client
        .post(srv.u("/v1/sessions"))
        .header("content-type", "application/json")
        .header("content-length", "999999999")
        .body(vec![b' '; 10])
        .send()
        .await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status().as_u16(), 413);
    }
    // A streamed (chunked) body over the cap is cut off while reading: 413, not an allocation.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![b' '; 4096])).collect();
    let resp = srv
        .client
        .post(srv.u("/v1/sessions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 413);
    // A page from another site cannot change anything; a loopback page and the CLI (no Origin) can.
    let resp = srv
        .client
        .post(srv.u(&format!("/v1/sessions/{id}/fork")))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("send");
    let (s, err) = common::status_json(resp).await;
    assert_eq!(s, 403, "{err}");
    assert_eq!(err["error"]["code"], "forbidden");
    let resp = srv
        .client
        .post(srv.u(&format!("/v1/sessions/{id}/fork")))
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 201);
    let resp = srv
        .client
        .get(srv.u("/v1/sessions"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.status().as_u16(),
        200,
        "reads are not refused (no cookies or auth to steal)"
    );
    // The server is still healthy after all that.
    assert_eq!(srv.get("/health").await.0, 200);
}

#[tokio::test]
async fn restart_with_the_same_database_keeps_everything() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let a = srv.create_session("keep me").await;
    let items: Vec<String> = futures_util::future::join_all((0..5).map(|i| {
        let srv = &srv;
        let a = a.clone();
        async move { srv.append_text(&a, &format!("m{i}")).await }
    }))
    .await;
    srv.patch(&format!("/v1/sessions/{a}"), json!({"labels": {"k": "v"}}))
        .await;
    let mut s1 = srv.stream(&a, None).await;
    let ready = s1.expect().await;
    let seq_before: u64 = common::id_of(&ready);
    let (_, before) = srv.get(&format!("/v1/sessions/{a}")).await;
    let (r, took) = srv.shutdown().await;
    r.expect("clean stop");
    assert!(
        took < std::time::Duration::from_secs(1),
        "stopped in {took:?}"
    );

    let srv = TestServer::start(home.path()).await;
    let (s, after) = srv.get(&format!("/v1/sessions/{a}")).await;
    assert_eq!(s, 200);
    assert_eq!(after, before, "snapshot identical after restart");
    let (_, page) = srv.get(&format!("/v1/sessions/{a}/items")).await;
    let mut got = ids(&page);
    let mut want = items.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Sequence numbers never go backwards across a restart.
    let mut s2 = srv.stream(&a, None).await;
    assert!(common::id_of(&s2.expect().await) >= seq_before);
    srv.append_text(&a, "after restart").await;
    let ev = s2.next_non_heartbeat().await.expect("event");
    assert!(common::id_of(&ev) > seq_before);
    let (_, info) = srv.get("/v1/info").await;
    assert_eq!(info["session_count"], 1);
}

#[tokio::test]
async fn a_second_server_on_the_same_database_refuses_to_start() {
    let home = tempfile::tempdir().expect("tmp");
    let config = ServerConfig::for_home(home.path());
    let first = open_store(&config).await.expect("first opens");
    let err = open_store(&config).await.expect_err("second must refuse");
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&home.path().join("data/omnigent.db").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("another omnigent server"), "{msg}");
    // Through run(): it returns the error without serving.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let res = omnigent_server::run(config.clone(), listener, std::future::pending()).await;
    assert!(matches!(
        res,
        Err(omnigent_server::ServerError::Open(OpenError::Locked { .. }))
    ));
    first.close().await;
    drop(first);
    let again = open_store(&config)
        .await
        .expect("opens once the first is gone");
    again.close().await;
}

#[tokio::test]
async fn corrupt_or_unusable_database_refuses_to_start() {
    let home = tempfile::tempdir().expect("tmp");
    let config = ServerConfig::for_home(home.path());
    let db = home.path().join("data/omnigent.db");
    std::fs::create_dir_all(db.parent().expect("parent")).expect("mkdir");
    std::fs::write(&db, "this is not a database, just text ".repeat(200)).expect("write");
    let err = open_store(&config).await.expect_err("corrupt must refuse");
    assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&db.display().to_string()) && msg.contains("move it aside"),
        "{msg}"
    );

    // The data "directory" is a file: cannot create the database.
    let home2 = tempfile::tempdir().expect("tmp");
    std::fs::write(home2.path().join("data"), "x").expect("write");
    let err = open_store(&ServerConfig::for_home(home2.path()))
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("omnigent.db"), "{err}");

    // Postgres is not supported yet, and says so.
    let pg = ServerConfig::for_home(home.path())
        .with_database_url("postgres://u:secret@db/omni")
        .expect("parses");
    let err = open_store(&pg).await.expect_err("unsupported");
    let msg = err.to_string();
    assert!(
        msg.contains("not supported yet") && !msg.contains("secret"),
        "{msg}"
    );
}

#[tokio::test]
async fn read_only_database_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("tmp");
    let config = ServerConfig::for_home(home.path());
    let store = open_store(&config).await.expect("create");
    store.close().await;
    drop(store);
    let db = home.path().join("data/omnigent.db");
    // Root ignores permission bits, so as root (CI) the file is made immutable instead: then even root's
    // open for writing fails, which is what a read-only file looks like to the server.
    let _immutable = if nix::unistd::geteuid().is_root() {
        Some(Immutable::set(&db))
    } else {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        None
    };
    let err = open_store(&config)
        .await
        .expect_err("read-only must refuse");
    assert!(matches!(err, OpenError::ReadOnly { .. }), "{err:?}");
    assert!(err.to_string().contains(&db.display().to_string()));
}

/// `chattr +i` on a file for the life of the guard (so the temp dir can be removed afterwards).
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &std::path::Path) -> Self {
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .expect("chattr (e2fsprogs) runs");
        assert!(status.success(), "chattr +i {} failed", path.display());
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}
