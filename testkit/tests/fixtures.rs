//! The fixtures' own promises: a held port reads as free, is never given to a port-0 bind, and takes the
//! server it is held for; the fake vendor answers in script order and records what it was asked; the SSE reader keeps ids.
#![allow(clippy::unwrap_used)]

use omnigent_testkit::net::PortReservation;
use omnigent_testkit::sse::{Sse, id_of, json_of};
use omnigent_testkit::{Canned, FakeVendor, serve};

/// Whether any of `n` port-0 binds (each closed again) is given `port`.
fn port_zero_binds_get(port: u16, n: usize) -> bool {
    (0..n).any(|_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port() == port
    })
}

#[tokio::test]
async fn a_reserved_port_refuses_dials_is_never_given_to_port_zero_and_takes_its_server() {
    let reserved = PortReservation::new();
    let port = reserved.port;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!port_zero_binds_get(port, 5_000));
    // What `omnigent server run --port N` does: tokio's listener (SO_REUSEADDR) binds and listens.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (_client, accepted) = tokio::join!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
        listener.accept()
    );
    accepted.unwrap();
    drop(listener);
    // Still held once the server is gone: nothing else is given it meanwhile.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!port_zero_binds_get(port, 5_000));
    let foreign = reserved.listen();
    assert_eq!(foreign.local_addr().unwrap().port(), port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
}

#[tokio::test]
async fn the_fake_vendor_answers_in_order_then_refuses_and_records_every_request() {
    let vendor = FakeVendor::start(vec![
        Canned::stream(vec!["data: 1\n\n".into()]),
        Canned::status(429, "{\"error\":{}}"),
    ])
    .await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for n in 0..3 {
        let resp = http
            .post(format!("{}/v1/chat/completions", vendor.url))
            .json(&serde_json::json!({"n": n}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    vendor.asked(3).await;
    assert_eq!(statuses, [200, 429, 500]);
    let requests = vendor.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].path, "/v1/chat/completions");
    assert_eq!(requests[2].body["n"], 2);
}

#[tokio::test]
async fn the_sse_reader_yields_events_with_ids_and_waits_for_a_predicate() {
    let app = axum::Router::new().route(
        "/stream",
        axum::routing::get(|| async {
            (
                [("content-type", "text/event-stream")],
                "id: 1\nevent: session.heartbeat\ndata: {}\n\n\
                 id: 2\nevent: a\ndata: {\"n\":1}\n\n\
                 id: 3\nevent: b\ndata: {\"n\":2}\n\n",
            )
        }),
    );
    let served = serve(app).await;
    let client = reqwest::Client::new();
    let mut sse = Sse::open(&client, &format!("{}/stream", served.url), None).await;
    let first = sse.expect().await;
    assert_eq!(id_of(&first), 1);
    let events = sse.until(|kind, v| kind == "b" && v["n"] == 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].0, "a");
    let mut again = Sse::open(&client, &format!("{}/stream", served.url), None).await;
    let m = again.next_non_heartbeat().await.unwrap();
    assert_eq!((id_of(&m), json_of(&m)["n"].as_u64()), (2, Some(1)));
}
