//! The session task driven by hand: what subscribers get, the turn's record, the backlog's bounds.
#![allow(clippy::unwrap_used)]

use super::backlog::{Backlog, json_len};
use super::*;

/// A session driven by hand (no task), and the receiver of the commands it sends itself.
fn session() -> (Session, mpsc::UnboundedReceiver<Command>) {
    let (done_tx, commands) = mpsc::unbounded_channel();
    let (emit_tx, _) = mpsc::unbounded_channel();
    let defaults = SessionDefaults {
        workspace: ".".into(),
        harness: HarnessKind::Echo,
        env: HarnessEnv::default(),
        harness_name: None,
        agents: None,
    };
    let session = Session::new("conv_test".into(), &defaults, emit_tx, done_tx);
    (session, commands)
}

/// A subscriber that asks for the turn's record, as our server does.
fn subscribe(session: &mut Session) -> Subscription {
    subscribe_asking(session, true)
}

fn subscribe_asking(session: &mut Session, record: bool) -> Subscription {
    let (reply, mut answer) = oneshot::channel();
    session.handle(Command::Subscribe { record, reply });
    answer.try_recv().unwrap()
}

fn event(n: usize) -> Value {
    json!({"type": "session.test", "delta": n.to_string()})
}

fn numbers(events: &[Value]) -> Vec<usize> {
    events
        .iter()
        .map(|e| e["delta"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn received(subscription: &mut Subscription) -> Vec<Value> {
    let mut events = Vec::new();
    while let Ok(event) = subscription.events.try_recv() {
        events.push(event);
    }
    events
}

fn delta(text: &str) -> Value {
    json!({"type": "response.output_text.delta", "delta": text})
}

fn in_progress() -> Value {
    json!({"type": "response.in_progress", "response": {"id": "resp_1", "model": "m"}})
}

#[test]
fn a_turns_text_goes_out_as_one_message_completed_with_its_whole_text_before_each_item_and_the_end()
{
    let (mut session, _commands) = session();
    let mut sub = subscribe(&mut session);
    session.publish(in_progress());
    session.publish(delta("Let me "));
    session.publish(delta("look."));
    session.publish(json!({"type": "response.output_item.done", "item": {"id": "c".repeat(32),
        "type": "function_call", "status": "completed", "call_id": "c1", "name": "shell", "arguments": "{}"}}));
    session.publish(delta("Done."));
    session.publish(json!({"type": "response.completed", "response": {"id": "resp_1"}}));
    let out = received(&mut sub);
    let kinds: Vec<&str> = out.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.in_progress",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_item.done",
            "response.output_item.done",
            "response.output_text.delta",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let first = &out[3]["item"];
    assert_eq!(first["type"], "message");
    assert_eq!(first["role"], "assistant");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["response_id"], "resp_1");
    assert_eq!(first["model"], "m");
    // A 0.19.1 server stores an assistant message only with its `agent`.
    assert_eq!(first["agent"], "m");
    assert_eq!(first["content"][0]["text"], "Let me look.");
    assert_eq!(out[1]["message_id"], first["id"]);
    assert_eq!((&out[1]["index"], &out[2]["index"]), (&json!(0), &json!(1)));
    let second = &out[6]["item"];
    assert_eq!(second["content"][0]["text"], "Done.");
    assert_eq!(out[5]["message_id"], second["id"]);
    assert_ne!(first["id"], second["id"]);
}

#[test]
fn a_new_subscriber_gets_the_turn_so_far_then_what_was_kept_with_deltas_merged() {
    let (mut session, mut commands) = session();
    let first = subscribe(&mut session);
    session.publish(in_progress());
    session.publish(delta("one "));
    session.publish(json!({"type": "response.output_item.done", "item": {"id": "c".repeat(32),
        "type": "function_call", "status": "completed", "call_id": "c1", "name": "shell", "arguments": "{}"}}));
    session.publish(delta("two "));
    // The subscriber goes (the server died with these in flight): the next one must still get all of it.
    drop(first);
    session.handle(commands.try_recv().unwrap());
    session.publish(delta("three "));
    session.publish(delta("four"));
    let next = subscribe(&mut session);
    let kinds: Vec<&str> = next
        .backlog
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "session.status",
            "response.in_progress",
            "response.output_item.done",
            "response.output_item.done",
            "response.output_text.delta",
            "response.output_text.delta",
        ]
    );
    // The turn is under way, ...
    assert_eq!(next.backlog[0]["status"], "running");
    assert_eq!(next.backlog[1]["response"]["id"], "resp_1");
    // ... what it completed, ...
    let b = &next.backlog[2..];
    assert_eq!(b[0]["item"]["content"][0]["text"], "one ");
    assert_eq!(b[1]["item"]["call_id"], "c1");
    // ... the open message as it stood when the subscriber went, marked as the whole text so far, ...
    assert_eq!(b[2]["delta"], "two ");
    assert_eq!(b[2]["snapshot"], true);
    // ... and what came after, merged into one delta of the same message.
    assert_eq!(b[3]["delta"], "three four");
    assert_eq!(b[3]["message_id"], b[2]["message_id"]);
    assert_eq!(b[3]["index"], 2);
    assert!(b[3].get("snapshot").is_none());

    // Every later subscriber gets the record again (a server skips the items it has).
    session.publish(json!({"type": "response.completed", "response": {"id": "resp_1"}}));
    drop(next);
    session.handle(commands.try_recv().unwrap());
    let last = subscribe(&mut session);
    let texts: Vec<&str> = last
        .backlog
        .iter()
        .filter(|e| e["item"]["type"] == "message")
        .map(|e| e["item"]["content"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one ", "two three four"]);
    assert!(
        last.backlog.iter().all(|e| e["type"] != "session.status"),
        "ended"
    );
    // A new turn starts a new record.
    session.publish(in_progress());
    drop(last);
    session.handle(commands.try_recv().unwrap());
    let fresh = subscribe(&mut session);
    assert_eq!(fresh.backlog.len(), 2, "{:?}", fresh.backlog);
}

#[test]
fn only_a_subscriber_that_asks_gets_the_turns_record() {
    let (mut session, mut commands) = session();
    let first = subscribe(&mut session);
    session.publish(in_progress());
    session.publish(delta("one "));
    session.publish(json!({"type": "response.output_item.done", "item": {"id": "c".repeat(32),
        "type": "function_call", "status": "completed", "call_id": "c1", "name": "shell", "arguments": "{}"}}));
    session.publish(delta("two "));
    drop(first);
    session.handle(commands.try_recv().unwrap());

    // Nothing kept: a peer that did not ask (a Python server) gets nothing re-sent.
    let plain = subscribe_asking(&mut session, false);
    assert!(plain.backlog.is_empty(), "{:?}", plain.backlog);
    drop(plain);
    session.handle(commands.try_recv().unwrap());

    // Something kept: it gets just that, no items it had and no snapshot delta.
    session.publish(delta("three "));
    let plain = subscribe_asking(&mut session, false);
    assert_eq!(plain.backlog.len(), 1, "{:?}", plain.backlog);
    assert_eq!(plain.backlog[0]["delta"], "three ");
    assert!(plain.backlog[0].get("snapshot").is_none());
    drop(plain);
    session.handle(commands.try_recv().unwrap());

    // One that asks gets the record: the turn under way, its items, the open message's whole text.
    let asked = subscribe_asking(&mut session, true);
    let kinds: Vec<&str> = asked
        .backlog
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "session.status",
            "response.in_progress",
            "response.output_item.done",
            "response.output_item.done",
            "response.output_text.delta",
        ]
    );
    assert_eq!(asked.backlog[4]["delta"], "two three ");
    assert_eq!(asked.backlog[4]["snapshot"], true);
}

#[test]
fn a_pending_question_is_part_of_the_record_until_it_is_answered() {
    let (mut session, mut commands) = session();
    let first = subscribe(&mut session);
    session.publish(in_progress());
    let ask = |id: &str| {
        json!({"type": "response.elicitation_request", "elicitation_id": id, "method": "elicitation/create",
            "params": {"mode": "form", "message": "Allow Bash?"}})
    };
    session.publish(json!({"type": "session.status", "status": "waiting"}));
    session.publish(ask("elicit_1"));
    session.publish(ask("elicit_2"));
    session.publish(json!({"type": "response.elicitation_resolved", "elicitation_id": "elicit_1", "action": "accept"}));
    assert_eq!(session.snapshot()["status"], "waiting");
    drop(first);
    session.handle(commands.try_recv().unwrap());

    // A server that re-subscribes (restarted, say) learns the turn runs and still waits on elicit_2.
    let again = subscribe(&mut session);
    let record: Vec<(String, String)> = again
        .backlog
        .iter()
        .map(|e| {
            let detail = e["status"]
                .as_str()
                .or(e["elicitation_id"].as_str())
                .unwrap_or("");
            (e["type"].as_str().unwrap().to_owned(), detail.to_owned())
        })
        .take(4)
        .collect();
    let pairs: Vec<(&str, &str)> = record
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("session.status", "running"),
            ("response.in_progress", ""),
            ("response.elicitation_request", "elicit_2"),
            ("session.status", "waiting"),
        ]
    );
    drop(again);
    session.handle(commands.try_recv().unwrap());

    // Answered: the record no longer asks.
    session.publish(json!({"type": "response.elicitation_resolved", "elicitation_id": "elicit_2", "action": "cancel",
        "reason": "unanswered"}));
    let kept = subscribe(&mut session);
    assert_eq!(
        kept.backlog.last().unwrap()["type"],
        "response.elicitation_resolved"
    );
    drop(kept);
    session.handle(commands.try_recv().unwrap());
    let last = subscribe(&mut session);
    assert!(
        last.backlog
            .iter()
            .all(|e| e["type"] != "response.elicitation_request" && e["status"] != "waiting"),
        "{:?}",
        last.backlog
    );
    assert_ne!(session.snapshot()["status"], "waiting");
}

#[test]
fn an_interrupted_or_failed_response_completes_its_message_as_incomplete() {
    let (mut session, _commands) = session();
    let mut sub = subscribe(&mut session);
    session.publish(in_progress());
    session.publish(delta("partial"));
    session.publish(json!({"type": "response.incomplete", "response": {"id": "resp_1"}}));
    let out = received(&mut sub);
    assert_eq!(out[2]["item"]["status"], "incomplete");
    assert_eq!(out[2]["item"]["content"][0]["text"], "partial");
    assert_eq!(out[3]["type"], "response.incomplete");
}

#[test]
fn events_published_with_no_subscriber_go_to_the_next_one_first_in_order() {
    let (mut session, _commands) = session();
    for n in 0..5 {
        session.publish(event(n));
    }
    let mut first = subscribe(&mut session);
    assert_eq!(numbers(&first.backlog), [0, 1, 2, 3, 4]);
    assert!(received(&mut first).is_empty());
    session.publish(event(5));
    assert_eq!(numbers(&received(&mut first)), [5]);
    // Handed over once: a second subscriber starts with the live events only.
    let mut second = subscribe(&mut session);
    assert!(second.backlog.is_empty());
    session.publish(event(6));
    assert_eq!(numbers(&received(&mut first)), [6]);
    assert_eq!(numbers(&received(&mut second)), [6]);
}

#[test]
fn a_subscriber_that_went_away_or_fell_behind_counts_as_gone() {
    let (mut session, mut commands) = session();
    // Dropped: its stream ended, it says so at once.
    drop(subscribe(&mut session));
    session.handle(commands.try_recv().unwrap());
    assert!(session.subscribers.is_empty());
    session.publish(event(0));

    // Closed but not yet told: the next event finds it gone.
    let gone = subscribe(&mut session);
    assert_eq!(numbers(&gone.backlog), [0]);
    drop(gone);
    session.publish(event(1));
    // Its late word changes nothing.
    session.handle(commands.try_recv().unwrap());
    assert!(session.subscribers.is_empty());

    // Too slow: dropped when its buffer is full, and what it could not take waits for the next one.
    let mut slow = subscribe(&mut session);
    assert_eq!(numbers(&slow.backlog), [1]);
    for n in 2..2 + SUBSCRIBER_BUFFER {
        session.publish(event(n));
    }
    assert_eq!(session.subscribers.len(), 1);
    session.publish(event(2 + SUBSCRIBER_BUFFER));
    assert!(session.subscribers.is_empty());
    session.publish(event(3 + SUBSCRIBER_BUFFER));
    let next = subscribe(&mut session);
    assert_eq!(
        numbers(&next.backlog),
        [2 + SUBSCRIBER_BUFFER, 3 + SUBSCRIBER_BUFFER]
    );
    // The slow one still reads what it had, then its stream ends: nothing missing, nothing twice.
    let had = received(&mut slow);
    assert_eq!(
        numbers(&had),
        (2..2 + SUBSCRIBER_BUFFER).collect::<Vec<_>>()
    );
    assert!(slow.events.try_recv().is_err());
    assert!(slow.events.is_closed());
}

#[test]
fn the_backlog_drops_the_oldest_past_its_event_bound() {
    let (mut session, _commands) = session();
    for n in 0..BACKLOG_MAX_EVENTS + 7 {
        session.publish(event(n));
    }
    assert_eq!(session.backlog.dropped, 7);
    let subscription = subscribe(&mut session);
    assert_eq!(subscription.backlog.len(), BACKLOG_MAX_EVENTS);
    assert_eq!(
        numbers(&subscription.backlog),
        (7..BACKLOG_MAX_EVENTS + 7).collect::<Vec<_>>()
    );
    assert_eq!(session.backlog.dropped, 0, "counted once, when handed over");
    assert_eq!(session.backlog.bytes, 0);
}

#[test]
fn the_backlog_drops_the_oldest_past_its_byte_bound_but_keeps_the_newest() {
    let big = |n: usize| json!({"type": "x", "n": n, "pad": "a".repeat(1000)});
    let size = json_len(&big(0));
    assert_eq!(size, big(0).to_string().len());
    let mut backlog = Backlog::new(100, 3 * size);
    for n in 0..5 {
        backlog.push(big(n));
    }
    assert_eq!(backlog.bytes, 3 * size);
    let (_, kept, dropped) = backlog.take();
    let kept: Vec<u64> = kept.iter().map(|e| e["n"].as_u64().unwrap()).collect();
    assert_eq!((kept, dropped), (vec![2, 3, 4], 2));

    let mut backlog = Backlog::new(100, size / 2);
    backlog.push(big(0));
    backlog.push(big(1));
    let (_, kept, dropped) = backlog.take();
    assert_eq!((kept, dropped), (vec![big(1)], 1));
}

#[test]
fn the_byte_bound_holds_with_the_real_bounds() {
    let (mut session, _commands) = session();
    let pad = "b".repeat(64 * 1024);
    for n in 0..200 {
        session.publish(json!({"type": "x", "n": n, "pad": pad}));
    }
    assert!(session.backlog.bytes <= BACKLOG_MAX_BYTES);
    let subscription = subscribe(&mut session);
    let first = subscription.backlog[0]["n"].as_u64().unwrap();
    let kept = subscription.backlog.len() as u64;
    assert!(kept < 200 && first == 200 - kept, "{first} {kept}");
}

/// The MCP hook: servers set through the session's init reach its turns, whose calls stream as items.
#[tokio::test]
async fn mcp_servers_set_at_init_offer_their_tools_to_the_sessions_turns() {
    use omnigent_testkit::vendor::{Canned, FakeVendor};
    let data = |chunk: Value| format!("data: {chunk}\n\n");
    let vendor = FakeVendor::start(vec![
        Canned::stream(vec![
            data(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1",
                "type": "function", "function": {"name": "notes__add", "arguments": "{\"a\":1,\"b\":2}"}}]}}]})),
            "data: [DONE]\n\n".to_owned(),
        ]),
        Canned::stream(vec![
            data(json!({"choices": [{"index": 0, "delta": {"content": "3."}}]})),
            "data: [DONE]\n\n".to_owned(),
        ]),
    ])
    .await;
    let ws = tempfile::tempdir().unwrap();
    let env = HarnessEnv {
        model: Some("gpt-test".into()),
        vendors: vec![(
            HarnessKind::OpenAi,
            crate::VendorEnv {
                base_url: Some(vendor.url.clone()),
                credential: Some((omnigent_proto::harness::CredentialKind::ApiKey, "sk".into())),
            },
        )],
        exec_command: None,
        ..HarnessEnv::default()
    };
    let sessions = Sessions::new(SessionDefaults {
        workspace: ws.path().to_owned(),
        harness: HarnessKind::OpenAi,
        env,
        harness_name: None,
        agents: None,
    });
    let handle = sessions.get_or_create("conv_mcp");
    let server = omnigent_proto::agent::spec::Tool {
        command: Some("/usr/bin/python3".into()),
        args: vec![format!(
            "{}/tests/fixtures/mcp_server.py",
            env!("CARGO_MANIFEST_DIR")
        )],
        ..Default::default()
    };
    handle
        .init(SessionInit {
            mcp_servers: Some(vec![("notes".into(), server)]),
            ..SessionInit::default()
        })
        .unwrap();
    let mut sub = handle.subscribe(true).await.unwrap();
    handle
        .message(TurnInput {
            text: "add".into(),
            agent_name: None,
        })
        .await
        .unwrap();
    let mut items = Vec::new();
    omnigent_testkit::within(30, async {
        while let Some(event) = sub.events.recv().await {
            if event["type"] == "response.output_item.done" {
                items.push(event["item"].clone());
            }
            if event["type"] == "response.completed" {
                break;
            }
        }
    })
    .await;
    let kinds: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["function_call", "function_call_output", "message"]);
    assert_eq!(items[0]["name"], "notes__add");
    assert_eq!(items[1]["call_id"], "call_1");
    assert_eq!(items[1]["output"], "3");
    assert_eq!(items[2]["content"][0]["text"], "3.");
}

fn loaded(harness: HarnessKind, name: &str, wire_api: Option<WireApi>) -> AgentLoad {
    AgentLoad::Loaded(Box::new(crate::agent::LoadedAgent {
        name: Some("a".into()),
        harness,
        harness_name: name.into(),
        model: Some("spec-model".into()),
        base_url: Some("http://spec".into()),
        api_key: Some("spec-key".into()),
        instructions: Some("be the spec".into()),
        wire_api,
        mcp_servers: vec![("files".into(), Default::default())],
        permission_mode: Some("default".into()),
        dir: ".".into(),
    }))
}

fn init(harness: Option<(&str, HarnessKind)>, agent: Option<AgentLoad>) -> Command {
    Command::Init(SessionInit {
        harness: harness.map(|(n, k)| (n.to_owned(), k)),
        agent,
        ..SessionInit::default()
    })
}

#[test]
fn the_spec_sets_the_harness_and_its_settings_unless_the_init_names_one() {
    let (mut s, _commands) = session();
    s.handle(init(
        None,
        Some(loaded(HarnessKind::OpenAi, "openai-agents", None)),
    ));
    assert_eq!(s.harness, HarnessKind::OpenAi);
    let config = s.turn_config();
    assert_eq!(config.model.as_deref(), Some("spec-model"));
    assert_eq!(config.api_key.as_deref(), Some("spec-key"));
    assert_eq!(config.base_url.as_deref(), Some("http://spec"));
    assert_eq!(config.instructions.as_deref(), Some("be the spec"));
    assert_eq!(config.permission_mode.as_deref(), Some("default"));
    assert_eq!(config.agent_mcp_servers.len(), 1);
    // Back to built-in (the server has no agent any more): the runner's default again, no spec settings.
    s.handle(init(None, Some(AgentLoad::BuiltIn)));
    assert_eq!(s.harness, HarnessKind::Echo);
    assert_eq!(s.turn_config().instructions, None);
    assert_eq!(s.turn_config().permission_mode, None);
    // An init that names a harness wins over the spec's.
    s.handle(init(
        Some(("anthropic", HarnessKind::Anthropic)),
        Some(loaded(HarnessKind::OpenAi, "openai-agents", None)),
    ));
    assert_eq!(s.harness, HarnessKind::Anthropic);
}

#[test]
fn the_openai_api_comes_from_the_env_then_the_spec_then_the_harness_name() {
    let (mut s, _commands) = session();
    s.handle(init(Some(("openai-agents", HarnessKind::OpenAi)), None));
    assert_eq!(s.turn_config().wire_api, Some(WireApi::Responses));
    s.handle(init(Some(("openai", HarnessKind::OpenAi)), None));
    assert_eq!(s.turn_config().wire_api, Some(WireApi::Chat));
    s.handle(init(
        None,
        Some(loaded(
            HarnessKind::OpenAi,
            "openai",
            Some(WireApi::Responses),
        )),
    ));
    assert_eq!(s.turn_config().wire_api, Some(WireApi::Responses));
    s.env.openai_wire_api = Some(WireApi::Chat);
    assert_eq!(s.turn_config().wire_api, Some(WireApi::Chat));
}
