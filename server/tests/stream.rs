//! SSE: ordering across subscribers, `Last-Event-ID` replay, slow subscribers, heartbeats, the end of
//! streams on delete and shutdown, and gapless positions under concurrent writes.

mod common;

use std::time::Duration;

use common::{TestServer, id_of, item_text, json_of};
use rand::{Rng, SeedableRng};
use serde_json::json;

#[tokio::test]
async fn stream_headers_and_ready_heartbeat() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let id = srv.create_session("s").await;
    let mut sse = srv.stream(&id, None).await;
    let h = sse.resp.headers();
    assert_eq!(h["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let ready = sse.expect().await;
    assert_eq!(ready.event.as_deref(), Some("session.heartbeat"));
    assert_eq!(json_of(&ready)["type"], "session.heartbeat");
    assert!(ready.id.is_some());
    let (s, _) = srv
        .get("/v1/sessions/0123456789abcdef0123456789abcdef/stream")
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn three_concurrent_subscribers_see_the_same_order() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let id = srv.create_session("fanout").await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut s = srv.stream(&id, None).await;
        s.expect().await; // ready heartbeat: subscribed
        subs.push(s);
    }
    // Writers in parallel: the actor serialises them; every subscriber must see one identical order.
    let writers = (0..4).map(|w| {
        let srv = &srv;
        let id = id.clone();
        async move {
            for i in 0..25 {
                if i % 2 == 0 {
                    srv.append_text(&id, &format!("w{w}-{i}")).await;
                } else {
                    srv.delta(&id, &format!("w{w}-{i}")).await;
                }
            }
        }
    });
    futures_util::future::join_all(writers).await;
    let mut seen = Vec::new();
    for s in &mut subs {
        let mut events = Vec::new();
        while events.len() < 100 {
            let m = s.next_non_heartbeat().await.expect("event");
            let v = json_of(&m);
            let label = if m.event.as_deref() == Some("response.output_item.done") {
                item_text(&m)
            } else {
                v["delta"].as_str().expect("delta").to_owned()
            };
            assert_eq!(v["type"], m.event.clone().expect("event line"));
            events.push((id_of(&m), label));
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "ids are consecutive: {seqs:?}"
        );
        seen.push(events);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    // Each writer's own events keep their order.
    for w in 0..4 {
        let mine: Vec<String> = seen[0]
            .iter()
            .filter(|e| e.1.starts_with(&format!("w{w}-")))
            .map(|e| e.1.clone())
            .collect();
        let want: Vec<String> = (0..25).map(|i| format!("w{w}-{i}")).collect();
        assert_eq!(mine, want);
    }
}

/// A client that drops and reconnects with Last-Event-ID at random points over 1,000 durable events sees
/// each exactly once, in order, including when it fell behind the in-memory buffer (replay from the store).
#[tokio::test]
async fn last_event_id_replays_exactly_what_was_missed_over_1000_events() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| c.replay_buffer = 32).await;
    let id = srv.create_session("replay").await;
    const N: usize = 1000;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let publisher = {
        let client = srv.client.clone();
        let url = srv.u(&format!("/v1/sessions/{id}/events"));
        tokio::spawn(async move {
            for i in 0..N {
                let resp = client
                    .post(&url)
                    .json(&json!({"type": "external_conversation_item", "data": {
                        "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": i.to_string()}]
                    }}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(resp.status().as_u16(), 202);
                let _ = progress_tx.send(i + 1);
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut received: Vec<usize> = Vec::new();
    let mut last_id: Option<u64> = None;
    let mut reconnects = 0;
    let mut store_replays = 0;
    while received.len() < N {
        // Sometimes fall far behind before reconnecting, so the buffer (32) no longer covers the gap.
        if reconnects % 5 == 4 {
            let target = (received.len() + 100).min(N);
            progress
                .wait_for(|p| *p >= target)
                .await
                .expect("publisher alive");
            store_replays += 1;
        }
        let mut sse = srv.stream(&id, last_id).await;
        let ready = sse.expect().await;
        assert_eq!(ready.event.as_deref(), Some("session.heartbeat"));
        if let Some(l) = last_id {
            assert_eq!(
                id_of(&ready),
                l,
                "the ready heartbeat carries the resume point"
            );
        }
        let take = rng.random_range(1..60);
        for _ in 0..take {
            if received.len() == N {
                break;
            }
            let m = sse.next_non_heartbeat().await.expect("event");
            assert_eq!(m.event.as_deref(), Some("response.output_item.done"));
            let n: usize = item_text(&m).parse().expect("number");
            if let Some(l) = last_id {
                assert!(id_of(&m) > l, "ids increase");
            }
            last_id = Some(id_of(&m));
            received.push(n);
        }
        reconnects += 1;
        drop(sse);
    }
    publisher.await.expect("publisher");
    assert_eq!(
        received,
        (0..N).collect::<Vec<_>>(),
        "each event exactly once, in order"
    );
    assert!(
        reconnects > 20 && store_replays > 3,
        "{reconnects} reconnects, {store_replays} far behind"
    );
}

/// Transient events (deltas) within the buffer are replayed too.
#[tokio::test]
async fn last_event_id_replays_transient_events_from_the_buffer() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let id = srv.create_session("deltas").await;
    let mut first = srv.stream(&id, None).await;
    first.expect().await;
    for i in 0..300 {
        srv.delta(&id, &i.to_string()).await;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut got = Vec::new();
    let mut last = None;
    let mut sse = first;
    while got.len() < 300 {
        for _ in 0..rng.random_range(1..40) {
            if got.len() == 300 {
                break;
            }
            let m = sse.next_non_heartbeat().await.expect("event");
            got.push(
                json_of(&m)["delta"]
                    .as_str()
                    .expect("delta")
                    .parse::<usize>()
                    .expect("n"),
            );
            last = Some(id_of(&m));
        }
        sse = srv.stream(&id, last).await;
        sse.expect().await;
    }
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    // A Last-Event-ID at (or beyond) the head replays nothing: the next event is a new one.
    srv.delta(&id, "fresh").await;
    let m = sse.next_non_heartbeat().await.expect("event");
    assert_eq!(json_of(&m)["delta"], "fresh");
}

/// A reader that stops reading is never waited for and never cut off: the others stream on, and when it
/// reads again it gets what the feed still holds, the durable items of the stretch it fell behind on (from
/// the store), and the live tail, in order.
#[tokio::test]
async fn a_slow_subscriber_never_stalls_the_others_and_catches_up_from_the_store() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| c.replay_buffer = 8).await;
    let id = srv.create_session("slow").await;
    let mut slow = srv.stream(&id, None).await;
    slow.expect().await;
    let mut fast = srv.stream(&id, None).await;
    fast.expect().await;
    // Big events, so the slow reader's socket buffers fill and the feed (8 events) moves on without it.
    let chunk = "y".repeat(256 * 1024);
    const N: usize = 160;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            let m = fast
                .next_non_heartbeat()
                .await
                .expect("fast subscriber keeps receiving");
            if m.event.as_deref() == Some("response.output_text.delta") {
                assert_eq!(
                    json_of(&m)["delta"].as_str().map(str::len),
                    Some(256 * 1024)
                );
                n += 1;
            }
        }
        n
    });
    for i in 0..N {
        srv.delta(&id, &chunk).await;
        if i == N / 2 {
            let (status, _) = srv
                .post(
                    &format!("/v1/sessions/{id}/events"),
                    json!({"type": "external_conversation_item", "data": {
                        "type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": "middle"}]}}),
                )
                .await;
            assert_eq!(status, 202);
        }
    }
    assert_eq!(reader.await.expect("reader"), N);
    srv.delta(&id, "tail").await;
    // The slow one: some deltas, the durable item from the middle, then the tail; ids only grow.
    let mut deltas = 0;
    let mut middle = false;
    let mut tail = false;
    let mut last_id = 0;
    while !tail {
        let m = slow.expect().await;
        if m.event.as_deref() == Some("session.heartbeat") {
            continue;
        }
        let this = id_of(&m);
        assert!(this > last_id, "ids only grow: {this} after {last_id}");
        last_id = this;
        let data = json_of(&m);
        match m.event.as_deref() {
            Some("response.output_item.done") => {
                middle |= data["item"]["content"][0]["text"] == "middle";
            }
            Some("response.output_text.delta") if data["delta"] == "tail" => tail = true,
            Some("response.output_text.delta") => deltas += 1,
            _ => {}
        }
    }
    assert!(
        deltas < N,
        "the slow reader fell behind the feed (saw {deltas} of {N})"
    );
    assert!(
        middle,
        "the durable item it fell behind on came from the store"
    );
}

#[tokio::test]
async fn idle_heartbeats_keep_the_last_event_id() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start_with(home.path(), |c| {
        c.heartbeat_interval = Duration::from_millis(50)
    })
    .await;
    let id = srv.create_session("hb").await;
    srv.delta(&id, "one").await;
    let mut sse = srv.stream(&id, None).await;
    let ready = sse.expect().await;
    srv.delta(&id, "two").await;
    let two = sse.expect().await;
    assert_eq!(json_of(&two)["delta"], "two");
    assert_eq!(id_of(&two), id_of(&ready) + 1);
    for _ in 0..2 {
        let hb = sse.expect().await;
        assert_eq!(hb.event.as_deref(), Some("session.heartbeat"));
        assert_eq!(id_of(&hb), id_of(&two), "heartbeats repeat the last id");
        assert!(json_of(&hb)["server_time"].as_f64().expect("server_time") > 1.7e9);
    }
}

#[tokio::test]
async fn deleting_a_session_ends_its_streams_with_done() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let id = srv.create_session("bye").await;
    let mut a = srv.stream(&id, None).await;
    a.expect().await;
    let mut b = srv.stream(&id, None).await;
    b.expect().await;
    assert_eq!(srv.delete(&format!("/v1/sessions/{id}")).await.0, 200);
    for s in [&mut a, &mut b] {
        let m = s.next_non_heartbeat().await.expect("[DONE]");
        assert!(m.is_done(), "{m:?}");
        assert!(s.next().await.is_none(), "nothing after [DONE]");
    }
    let (st, _) = srv
        .post(
            &format!("/v1/sessions/{id}/events"),
            json!({"type": "interrupt"}),
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn shutdown_ends_open_streams_cleanly_within_a_second() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let mut streams = Vec::new();
    for i in 0..3 {
        let id = srv.create_session(&format!("s{i}")).await;
        let mut s = srv.stream(&id, None).await;
        s.expect().await;
        srv.delta(&id, "x").await;
        assert_eq!(
            s.expect().await.event.as_deref(),
            Some("response.output_text.delta")
        );
        streams.push(s);
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let m = s.next_non_heartbeat().await.expect("[DONE] before the end");
                assert!(m.is_done(), "{m:?}");
                assert!(s.next().await.is_none());
            })
        })
        .collect();
    let (result, took) = srv.shutdown().await;
    result.expect("clean stop");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    for r in readers {
        r.await.expect("stream ended with [DONE]");
    }
}

/// Writes acknowledged before shutdown are durable: every 202'd item is there after a restart.
#[tokio::test]
async fn acknowledged_writes_survive_a_shutdown_under_load() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let id = srv.create_session("load").await;
    let client = srv.client.clone();
    let url = srv.u(&format!("/v1/sessions/{id}/events"));
    let posts: Vec<_> = (0..60)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let resp = client
                    .post(&url)
                    .json(&json!({"type": "external_conversation_item", "data": {
                        "type": "message", "role": "user", "content": [{"type": "input_text", "text": format!("{i}")}]}}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let v: serde_json::Value = r.json().await.expect("json");
                        Some(v["item_id"].as_str().expect("id").to_owned())
                    }
                    _ => None,
                }
            })
        })
        .collect();
    // Let some requests get in flight, then stop.
    srv.delta(&id, "marker").await;
    let (result, took) = srv.shutdown().await;
    result.expect("clean stop");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let mut acked = Vec::new();
    for p in posts {
        if let Some(item) = p.await.expect("task") {
            acked.push(item);
        }
    }
    let srv = TestServer::start(home.path()).await;
    let (_, page) = srv
        .get(&format!("/v1/sessions/{id}/items?limit=1000"))
        .await;
    let stored: Vec<String> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect();
    for a in &acked {
        assert!(stored.contains(a), "acknowledged item {a} was lost");
    }
}

/// 100 concurrent POST …/events: positions stay gapless (checked in the SQLite file itself).
#[tokio::test]
async fn concurrent_writes_keep_positions_gapless() {
    let home = tempfile::tempdir().expect("tmp");
    let srv = TestServer::start(home.path()).await;
    let id = srv.create_session("race").await;
    let other = srv.create_session("other").await;
    let mut sse = srv.stream(&id, None).await;
    sse.expect().await;
    let posts = (0..100).map(|i| {
        let srv = &srv;
        let (id, other) = (id.clone(), other.clone());
        async move {
            srv.append_text(&id, &format!("p{i}")).await;
            if i % 10 == 0 {
                srv.append_text(&other, "x").await;
            }
        }
    });
    futures_util::future::join_all(posts).await;
    let mut seqs = Vec::new();
    while seqs.len() < 100 {
        seqs.push(id_of(&sse.next_non_heartbeat().await.expect("event")));
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    let db = home.path().join("data/omnigent.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .expect("open db");
    for (sid, n) in [(&id, 100i64), (&other, 10)] {
        let positions: Vec<i64> = sqlx::query_scalar(
            "SELECT i.position FROM items i JOIN sessions s ON s.pk = i.session_pk WHERE s.id = ? ORDER BY i.position",
        )
        .bind(sid)
        .fetch_all(&pool)
        .await
        .expect("query");
        assert_eq!(positions, (0..n).collect::<Vec<_>>());
    }
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    pool.close().await;
    use std::os::unix::fs::PermissionsExt;
    let perms = std::fs::metadata(&db).expect("db").permissions().mode() & 0o777;
    assert_eq!(perms, 0o600, "the database is private to its user");
}
