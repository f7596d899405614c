//! Server core benchmark (issue 2). Not a test: run it on a quiet machine.
//!
//! ```text
//! cargo build --release -p omnigent
//! cargo bench -p omnigent-server --bench core
//! ```
//!
//! Seeds 5,000 sessions × 50 items into a fresh SQLite file, then runs the real `omnigent server run`
//! binary on it and measures: p50/p99/requests-per-second at concurrency 1 and 32 for list sessions, get
//! session, load items, create+delete session; idle RSS; time from exec to `/health` answering.
//! `OMNIGENT_BIN` overrides the binary; `BENCH_SESSIONS` / `BENCH_ITEMS` the corpus size.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnigent_proto::ids::new_id;
use omnigent_server::store::{NewItem, NewSession, SessionRow};
use omnigent_server::{ServerConfig, open_store};
use serde_json::{Map, Value, json};
use sha2::Digest;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("OMNIGENT_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/omnigent");
    assert!(
        p.exists(),
        "{} does not exist: run `cargo build --release -p omnigent` first (or set OMNIGENT_BIN)",
        p.display()
    );
    p
}

async fn seed(home: &Path, sessions: usize, items: usize) -> Vec<String> {
    let store = open_store(&ServerConfig::for_home(home))
        .await
        .expect("open store");
    let base = 1_767_225_600_000i64;
    // The built-in echo agent's id (see src/agents.rs).
    let echo = hex::encode(&sha2::Sha256::digest(b"omnigent-rs:builtin-agent:echo")[..16]);
    let mut ids = Vec::with_capacity(sessions);
    for s in 0..sessions {
        let id = new_id();
        let t = base + (s as i64) * 1000;
        let row = SessionRow {
            title: Some(format!("session {s} about topic {}", s % 97)),
            workspace: Some("/home/user/project".into()),
            ..SessionRow::new(&id, &echo, t)
        };
        let new_items: Vec<NewItem> = (0..items)
            .map(|i| {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                let kind = if i % 2 == 0 { "input_text" } else { "output_text" };
                let mut data = Map::new();
                data.insert("role".into(), Value::from(role));
                data.insert(
                    "content".into(),
                    json!([{"type": kind, "text": format!("message {i} of session {s}: the quick brown fox jumps over the lazy dog while the build runs")}]),
                );
                NewItem {
                    id: new_id(),
                    kind: "message".into(),
                    status: "completed".into(),
                    response_id: Some(format!("resp_{s}_{}", i / 2)),
                    created_at_ms: t + i as i64,
                    created_by: None,
                    data,
                }
            })
            .collect();
        store
            .create_session(&NewSession { row }, &new_items)
            .await
            .expect("seed session");
        ids.push(id);
    }
    store.close().await;
    ids
}

struct Server {
    child: Child,
    /// The server's port, held for it from before the exec (no bind-drop-reuse race).
    _port: omnigent_testkit::net::PortReservation,
    url: String,
    exec_to_health: Duration,
}

/// Exec the server on a fixed port and poll `/health` from the moment of exec.
async fn start_server(home: &Path) -> Server {
    let reserved = omnigent_testkit::net::PortReservation::new();
    let port = reserved.port;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let child = Command::new(binary())
        .args(["server", "run", "--port", &port.to_string()])
        .env("OMNIGENT_HOME", home)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn omnigent");
    let health = loop {
        if let Ok(r) = client.get(format!("{url}/health")).send().await
            && r.status().is_success()
        {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server never became healthy"
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    };
    Server {
        child,
        _port: reserved,
        url,
        exec_to_health: health,
    }
}

fn stop_server(mut s: Server) {
    let pid = nix::unistd::Pid::from_raw(s.child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = s.child.wait();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Clone, Copy)]
enum Journey {
    List,
    Get,
    Items,
    CreateDelete,
}

impl Journey {
    fn name(self) -> &'static str {
        match self {
            Journey::List => "list sessions",
            Journey::Get => "get session",
            Journey::Items => "load items",
            Journey::CreateDelete => "create+delete session",
        }
    }
}

async fn op(client: &reqwest::Client, url: &str, j: Journey, ids: &[String], n: usize) {
    let ok = |r: reqwest::Response| {
        assert!(r.status().is_success(), "{}", r.status());
        r
    };
    match j {
        Journey::List => {
            ok(client
                .get(format!("{url}/v1/sessions"))
                .send()
                .await
                .expect("list"))
            .bytes()
            .await
            .expect("body");
        }
        Journey::Get => {
            let id = &ids[(n * 7919) % ids.len()];
            ok(client
                .get(format!("{url}/v1/sessions/{id}"))
                .send()
                .await
                .expect("get"))
            .bytes()
            .await
            .expect("body");
        }
        Journey::Items => {
            let id = &ids[(n * 7919) % ids.len()];
            ok(client
                .get(format!("{url}/v1/sessions/{id}/items"))
                .send()
                .await
                .expect("items"))
            .bytes()
            .await
            .expect("body");
        }
        Journey::CreateDelete => {
            let created: Value = ok(client
                .post(format!("{url}/v1/sessions"))
                .json(&json!({"agent_id": "echo", "title": "bench"}))
                .send()
                .await
                .expect("create"))
            .json()
            .await
            .expect("json");
            let id = created["id"].as_str().expect("id");
            ok(client
                .delete(format!("{url}/v1/sessions/{id}"))
                .send()
                .await
                .expect("delete"))
            .bytes()
            .await
            .expect("body");
        }
    }
}

struct Stats {
    p50: f64,
    p99: f64,
    rps: f64,
}

async fn run_journey(
    url: &str,
    j: Journey,
    ids: Arc<Vec<String>>,
    concurrency: usize,
    total: usize,
) -> Stats {
    // Warm up connections and caches.
    let warm = reqwest::Client::new();
    for n in 0..50 {
        op(&warm, url, j, &ids, n).await;
    }
    let per_task = total / concurrency;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let url = url.to_owned();
            let ids = ids.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let s = Instant::now();
                    op(&client, &url, j, &ids, t * per_task + i + 1000).await;
                    lat.push(s.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| all[((p * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1];
    Stats {
        p50: pct(0.50),
        p99: pct(0.99),
        rps: all.len() as f64 / elapsed,
    }
}

async fn bench() {
    let sessions = env_num("BENCH_SESSIONS", 5000);
    let items = env_num("BENCH_ITEMS", 50);
    let bin = binary();
    println!("# omnigent-rs server core bench");
    println!("binary: {}", bin.display());

    // Exec → healthy on an empty database.
    let empty = tempfile::tempdir().expect("tmp");
    let mut empty_health = Vec::new();
    let mut empty_rss = 0;
    for _ in 0..5 {
        let s = start_server(empty.path()).await;
        empty_health.push(s.exec_to_health);
        empty_rss = rss_kib(s.child.id());
        stop_server(s);
    }

    let home = tempfile::tempdir().expect("tmp");
    let t = Instant::now();
    let ids = Arc::new(seed(home.path(), sessions, items).await);
    let db = home.path().join("data/omnigent.db");
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!(
        "seeded {sessions} sessions × {items} items in {:.1} s ({:.1} MB database)",
        t.elapsed().as_secs_f64(),
        size as f64 / 1e6
    );

    let mut seeded_health = Vec::new();
    for _ in 0..4 {
        let s = start_server(home.path()).await;
        seeded_health.push(s.exec_to_health);
        stop_server(s);
    }
    let server = start_server(home.path()).await;
    seeded_health.push(server.exec_to_health);
    let pid = server.child.id();
    // Idle: after start, before any load.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(pid);

    println!();
    println!("| journey | concurrency | p50 ms | p99 ms | requests/s (ops/s) |");
    println!("|---|---|---|---|---|");
    for j in [
        Journey::List,
        Journey::Get,
        Journey::Items,
        Journey::CreateDelete,
    ] {
        for (c, total) in [(1usize, 2000usize), (32, 6400)] {
            let s = run_journey(&server.url, j, ids.clone(), c, total).await;
            println!(
                "| {} | {c} | {:.3} | {:.3} | {:.0} |",
                j.name(),
                s.p50,
                s.p99,
                s.rps
            );
        }
    }
    let after_rss = rss_kib(pid);
    stop_server(server);

    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    println!();
    println!(
        "idle RSS: {:.1} MB on the seeded database (empty database: {:.1} MB); after the load above: {:.1} MB",
        idle_rss as f64 / 1024.0,
        empty_rss as f64 / 1024.0,
        after_rss as f64 / 1024.0
    );
    println!(
        "exec → /health 200 (median of 5): {:.1} ms on an empty database, {:.1} ms on the seeded one",
        median(&mut empty_health),
        median(&mut seeded_health)
    );
}
