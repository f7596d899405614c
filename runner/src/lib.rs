//! omnigent-runner: dials the server's runner tunnel and serves the runner HTTP API from its frames; runs agent
//! turns through harnesses. See ARCHITECTURE.md.
//!
//! The whole surface is [`run`]`(`[`RunnerConfig`]`, shutdown)`: it keeps the tunnel up (reconnecting with
//! the full-jitter schedule of `omnigent_tunnel::client`), and ends with `Ok` on shutdown or with a [`RunnerError`] no retry can fix.

use std::path::PathBuf;
use std::time::Duration;

use omnigent_proto::headers::RUNNER_TUNNEL_TOKEN as TOKEN_HEADER;
use omnigent_proto::runner_frames::{Hello, close};
use omnigent_tunnel::client::{self, Backoff, DialError, DialRequest, ServerUrl};
use omnigent_tunnel::{RouterConfig, ServeEnd, serve_router};
use tracing::{Instrument, info, info_span, warn};

mod agent;
mod api;
pub mod approvals;
pub mod harness;
mod session;

pub use agent::SpecEnv;

use harness::{HarnessConfig, HarnessKind};
use omnigent_proto::harness::{self as harness_table, CredentialKind};
/// The redial schedule of [`RunnerConfig::backoff`] (250 ms doubling to 10 s, full jitter).
pub use omnigent_tunnel::client::BackoffPolicy;
/// What the runner logs at points black-box tests wait for (so they wait on these, not on copied text).
pub use session::{BACKLOG_TAKEN, NO_SUBSCRIBER_LEFT, TURN_ENDED};
/// The shutdown switch [`run`] takes (re-exported so callers need not depend on tokio-util).
pub use tokio_util::sync::CancellationToken;

/// How long the pre-tunnel `POST /v1/runners/{id}/token` and the WebSocket upgrade may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Vendor settings read from the environment once at startup; each harness takes its own. Every variable is
/// one the harness table (`omnigent_proto::harness`) names, read in the table's order, so what the daemon
/// reports as configured is what the runner uses.
#[derive(Debug, Clone, Default)]
pub struct HarnessEnv {
    /// `OMNIGENT_MODEL`
    pub model: Option<String>,
    /// Per vendor harness: its base URL and credential.
    pub vendors: Vec<(HarnessKind, VendorEnv)>,
    /// `OMNIGENT_EXEC_COMMAND`, split on whitespace.
    pub exec_command: Option<Vec<String>>,
    /// `OMNIGENT_OPENAI_WIRE_API` (`responses` or `chat`): which OpenAI API the `openai` harness speaks, over
    /// the agent spec and the harness name. A value it does not know is ignored (with a warning).
    pub openai_wire_api: Option<harness::openai::WireApi>,
}

/// One vendor harness's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VendorEnv {
    pub base_url: Option<String>,
    /// The first credential of the table's list that is set.
    pub credential: Option<(CredentialKind, String)>,
}

impl HarnessEnv {
    /// Read the variables of this process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Read the table's variables through `get` (which returns one variable's value).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let value = |vars: &[&'static str]| harness_table::first_set(vars, &get).map(|(_, v)| v);
        let vendors = HarnessKind::ALL
            .into_iter()
            .filter(|k| !k.spec().credentials.is_empty() || !k.spec().base_url.is_empty())
            .map(|k| {
                let env = VendorEnv {
                    base_url: k.base_url(&get),
                    credential: k.credential(&get).map(|(c, v)| (c.kind, v)),
                };
                (k, env)
            })
            .collect();
        HarnessEnv {
            model: value(harness_table::MODEL_VARS),
            vendors,
            exec_command: value(HarnessKind::Exec.spec().command)
                .map(|c| c.split_whitespace().map(str::to_owned).collect()),
            openai_wire_api: value(harness_table::OPENAI_WIRE_API_VARS).and_then(|v| {
                let parsed = harness::openai::WireApi::parse(&v);
                if parsed.is_none() {
                    warn!(value = %v, "OMNIGENT_OPENAI_WIRE_API is neither responses nor chat; ignored");
                }
                parsed
            }),
        }
    }

    /// The settings of harness `kind`.
    pub fn config_for(&self, kind: HarnessKind) -> HarnessConfig {
        let vendor = self
            .vendors
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let (api_key, auth_token) = match vendor.credential {
            Some((CredentialKind::ApiKey, v)) => (Some(v), None),
            Some((CredentialKind::BearerToken, v)) => (None, Some(v)),
            None => (None, None),
        };
        HarnessConfig {
            model: self.model.clone(),
            base_url: vendor.base_url,
            api_key,
            auth_token,
            exec_command: match kind {
                HarnessKind::Exec => self.exec_command.clone(),
                _ => None,
            },

            ..HarnessConfig::default()
        }
    }
}

/// Everything a runner needs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The server's base URL: `http(s)://host:port[/prefix]` (or `ws(s)://…`).
    pub server: String,
    /// The binding token; `None` dials as a random `runner_<hex>` without a token (loopback servers only).
    pub token: Option<String>,
    /// Default workspace of sessions whose init names none.
    pub workspace: PathBuf,
    /// Default harness of sessions whose init names none.
    pub harness: HarnessKind,
    /// That harness's name as the user or the daemon gave it (`--harness openai-agents`), for the defaults that
    /// hang on the name (the OpenAI API: Responses for `openai-agents` / `open-responses`). `None`: the
    /// harness's own name.
    pub harness_name: Option<String>,
    pub env: HarnessEnv,
    /// What `${VAR}`s in agent specs resolve to: this process's environment at startup.
    pub spec_env: SpecEnv,
    /// Where agents fetched from the server are unpacked (`<state_dir>/runner/agents`), one fresh directory
    /// per session init.
    pub agents_dir: PathBuf,
    pub backoff: BackoffPolicy,
    pub tunnel: RouterConfig,
}

impl RunnerConfig {
    /// A config with the protocol's defaults and the vendor settings of this process's environment.
    pub fn new(
        server: impl Into<String>,
        token: Option<String>,
        workspace: PathBuf,
        harness: HarnessKind,
    ) -> Self {
        RunnerConfig {
            server: server.into(),
            token: token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
            workspace,
            harness,
            harness_name: None,
            env: HarnessEnv::from_env(),
            spec_env: SpecEnv::from_env(),
            agents_dir: default_agents_dir(),
            backoff: BackoffPolicy::default(),
            tunnel: RouterConfig::default(),
        }
    }

    /// The runner id this config dials as: derived from the token, or fresh and random without one.
    pub fn runner_id(&self) -> String {
        match &self.token {
            Some(token) => omnigent_proto::ids::runner_id_for_token(token),
            None => format!("runner_{}", omnigent_proto::ids::new_id()),
        }
    }
}

/// `<state_dir>/runner/agents` of `omnigent_proto::paths`, or under the temp directory when no home exists.
fn default_agents_dir() -> PathBuf {
    omnigent_proto::paths::Paths::from_env()
        .map(|p| p.state_dir)
        .unwrap_or_else(|_| std::env::temp_dir().join("omnigent-state"))
        .join("runner")
        .join("agents")
}

/// Why a runner stopped for good. Every case is a configuration problem: retrying cannot fix it.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("server URL {url:?} is not usable: {reason}; pass --server http(s)://host:port")]
    BadServerUrl { url: String, reason: String },
    #[error("the server refused this runner's tunnel (close {code} {reason:?}): {}", refusal_hint(*code))]
    Refused { code: u16, reason: String },
    #[error(
        "the server rejected the runner tunnel with HTTP {status} before it ever connected; check --token \
         (the binding token the server issued) and the server's auth settings"
    )]
    Unauthorized { status: u16 },
}

fn refusal_hint(code: u16) -> &'static str {
    match code {
        close::HELLO_EXPECTED | close::PROTOCOL_MISMATCH => {
            "this runner and the server speak different tunnel protocols; install matching omnigent versions"
        }
        close::UNAUTHENTICATED => {
            "the token is missing, wrong or not for this runner id; pass the binding token the server issued with --token"
        }
        _ => "the server does not accept this runner; check the server's logs",
    }
}

/// Run the runner until `shutdown` (→ `Ok`) or a refusal no retry can fix (→ `Err`).
pub async fn run(config: RunnerConfig, shutdown: CancellationToken) -> Result<(), RunnerError> {
    let runner_id = config.runner_id();
    let span = info_span!("runner", runner_id = %runner_id);
    run_as(config, runner_id, shutdown).instrument(span).await
}

async fn run_as(
    config: RunnerConfig,
    runner_id: String,
    shutdown: CancellationToken,
) -> Result<(), RunnerError> {
    let urls = ServerUrls::new(&config.server, &runner_id)?;
    let bad_url = |reason: String| RunnerError::BadServerUrl {
        url: config.server.clone(),
        reason,
    };
    let agents = agent::AgentFetcher {
        client: reqwest::Client::builder()
            .connect_timeout(DIAL_TIMEOUT)
            .build()
            .map_err(|e| bad_url(format!("cannot build an HTTP client: {e}")))?,
        server: ServerUrl::parse(&config.server).map_err(bad_url)?,
        token: config.token.clone(),
        dir: config.agents_dir.clone(),
        env: config.spec_env.clone(),
    };
    let sessions = session::Sessions::new(session::SessionDefaults {
        workspace: config.workspace.clone(),
        harness: config.harness,
        harness_name: config.harness_name.clone(),
        env: config.env.clone(),
        agents: Some(agents),
    });
    let router = api::router(sessions);
    let http = reqwest::Client::builder()
        .timeout(DIAL_TIMEOUT)
        .build()
        .map_err(|e| RunnerError::BadServerUrl {
            url: config.server.clone(),
            reason: format!("cannot build an HTTP client: {e}"),
        })?;
    let dial = urls.dial(config.token.as_deref());
    let mut backoff = Backoff::new(config.backoff.clone());
    let mut ever_connected = false;
    loop {
        let dialled = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            dialled = client::dial(&http, &dial) => dialled,
        };
        let delay = match dialled {
            Ok(ws) => {
                ever_connected = true;
                info!(server = %urls.tunnel, "runner tunnel connected");
                let started = tokio::time::Instant::now();
                let end = serve_router(
                    ws,
                    hello(),
                    router.clone(),
                    config.tunnel.clone(),
                    shutdown.clone(),
                )
                .await;
                if end == ServeEnd::Shutdown {
                    return Ok(());
                }
                let delay = after_tunnel(&mut backoff, &end, started.elapsed())?;
                warn!(?end, ?delay, "runner tunnel lost; reconnecting");
                delay
            }
            Err(DialError::Status(status)) if matches!(status, 401 | 403) && !ever_connected => {
                return Err(RunnerError::Unauthorized { status });
            }
            Err(err) => {
                if matches!(err, DialError::Status(502)) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(error = %err, ?delay, "cannot reach the server's runner tunnel; retrying");
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// What `hello.harnesses` lists: every name this runner runs a session for, ours first, then omnigent's
/// (the table's aliases: `claude-sdk`, `openai-agents`, `open-responses`, `codex`, `pi`…), so a Python server
/// that looks for its own names finds them.
fn hello_harnesses() -> Vec<String> {
    let mut names: Vec<String> = HarnessKind::ALL
        .iter()
        .map(|k| k.name().to_owned())
        .collect();
    for kind in HarnessKind::ALL {
        for alias in kind.spec().aliases {
            if !names.iter().any(|n| n == alias) {
                names.push((*alias).to_owned());
            }
        }
    }
    names
}

/// The `hello` this runner sends.
fn hello() -> Hello {
    Hello {
        runner_version: omnigent_proto::BUILD_VERSION.to_owned(),
        frame_protocol_version: omnigent_proto::FRAME_PROTOCOL_VERSION,
        harnesses: hello_harnesses(),
        envs: Vec::new(),
        telemetry_opt_out: true,
        capabilities: Vec::new(),
        direct_attach_port: None,
        direct_attach_token: None,
        extra: Default::default(),
    }
}

/// What to do after a tunnel that was up for `connected_for` ended with `end` (DESIGN.md §6): wait this long
/// (the schedule reset after a long healthy connection or a routine recycle, close 1001/1012), or stop for
/// good (a refusal no retry can fix).
fn after_tunnel(
    backoff: &mut Backoff,
    end: &ServeEnd,
    connected_for: Duration,
) -> Result<Duration, RunnerError> {
    backoff.connection_ended(connected_for);
    match end {
        ServeEnd::Closed {
            code: Some(code),
            reason,
        } if close::is_fatal_for_runner(*code) => Err(RunnerError::Refused {
            code: *code,
            reason: reason.clone(),
        }),
        ServeEnd::Closed {
            code: Some(close::GOING_AWAY | close::SERVICE_RESTART),
            ..
        } => {
            backoff.reset();
            Ok(Duration::ZERO)
        }
        ServeEnd::Shutdown => Ok(Duration::ZERO),
        ServeEnd::Closed { .. } | ServeEnd::IdleTimeout => Ok(backoff.next_delay()),
    }
}

struct ServerUrls {
    /// `http(s)://…/v1/runners/{id}/token`
    token: client::Url,
    /// `ws(s)://…/v1/runners/{id}/tunnel`
    tunnel: client::Url,
}

impl ServerUrls {
    fn new(server: &str, runner_id: &str) -> Result<Self, RunnerError> {
        let bad = |reason: String| RunnerError::BadServerUrl {
            url: server.to_owned(),
            reason,
        };
        let base = ServerUrl::parse(server).map_err(bad)?;
        Ok(ServerUrls {
            token: base
                .http(&format!("/v1/runners/{runner_id}/token"))
                .map_err(bad)?,
            tunnel: base
                .ws(&format!("/v1/runners/{runner_id}/tunnel"))
                .map_err(bad)?,
        })
    }

    /// `POST …/token` like 0.19.1 (whatever it answers, carry on), then the upgrade, both with the token.
    fn dial(&self, token: Option<&str>) -> DialRequest {
        DialRequest {
            announce: Some((http::Method::POST, self.token.clone())),
            tunnel: self.tunnel.clone(),
            headers: token
                .map(|t| (http::HeaderName::from_static(TOKEN_HEADER), t.to_owned()))
                .into_iter()
                .collect(),
            timeout: DIAL_TIMEOUT,
            max_message_bytes: omnigent_proto::MAX_FRAME_BYTES,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_keep_the_prefix_and_map_schemes() {
        let urls = ServerUrls::new("http://127.0.0.1:6767", "runner_x").unwrap();
        assert_eq!(
            urls.tunnel.as_str(),
            "ws://127.0.0.1:6767/v1/runners/runner_x/tunnel"
        );
        assert_eq!(
            urls.token.as_str(),
            "http://127.0.0.1:6767/v1/runners/runner_x/token"
        );
        let urls = ServerUrls::new("https://team.example/omni/", "r").unwrap();
        assert_eq!(
            urls.tunnel.as_str(),
            "wss://team.example/omni/v1/runners/r/tunnel"
        );
        assert!(ServerUrls::new("ftp://x", "r").is_err());
        assert!(ServerUrls::new("not a url", "r").is_err());
    }

    fn closed(code: u16) -> ServeEnd {
        ServeEnd::Closed {
            code: Some(code),
            reason: String::new(),
        }
    }

    #[test]
    fn long_connections_and_recycles_reset_the_schedule() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for _ in 0..5 {
            backoff.next_delay();
        }
        // A short-lived tunnel keeps climbing.
        after_tunnel(&mut backoff, &closed(4003), Duration::from_secs(1)).unwrap();
        assert_eq!(backoff.ceiling(), Duration::from_secs(10));
        // A tunnel that was up for 60 s starts over.
        let delay = after_tunnel(&mut backoff, &closed(4003), Duration::from_secs(60)).unwrap();
        assert!(delay <= Duration::from_millis(250));
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
        // 1001 and 1012 are routine recycles: redial at once.
        for code in [1001, 1012] {
            for _ in 0..5 {
                backoff.next_delay();
            }
            assert_eq!(
                after_tunnel(&mut backoff, &closed(code), Duration::ZERO).unwrap(),
                Duration::ZERO
            );
            assert_eq!(backoff.ceiling(), Duration::from_millis(250));
        }
    }

    #[test]
    fn refusals_are_fatal() {
        for code in [4001, 4002, 4004, 4500] {
            let mut backoff = Backoff::new(BackoffPolicy::default());
            let err = after_tunnel(&mut backoff, &closed(code), Duration::ZERO).unwrap_err();
            assert!(matches!(err, RunnerError::Refused { code: c, .. } if c == code));
        }
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for end in [
            closed(4000),
            closed(4003),
            closed(1006),
            ServeEnd::IdleTimeout,
            ServeEnd::Closed {
                code: None,
                reason: "reset".into(),
            },
        ] {
            assert!(
                after_tunnel(&mut backoff, &end, Duration::ZERO).is_ok(),
                "{end:?}"
            );
        }
    }

    #[test]
    fn runner_id_comes_from_the_token_or_is_random() {
        let mut config = RunnerConfig::new(
            "http://x",
            Some(" tok ".into()),
            ".".into(),
            HarnessKind::Echo,
        );
        assert_eq!(
            config.runner_id(),
            omnigent_proto::ids::runner_id_for_token("tok")
        );
        config.token = None;
        let id = config.runner_id();
        assert!(
            id.starts_with("runner_") && id.len() == "runner_".len() + 32,
            "{id}"
        );
        assert_ne!(id, config.runner_id());
    }

    #[test]
    fn hello_lists_our_harnesses_and_no_event_ingest() {
        let hello =
            serde_json::to_value(omnigent_proto::runner_frames::RunnerFrame::Hello(hello()))
                .unwrap();
        let harnesses: Vec<String> = serde_json::from_value(hello["harnesses"].clone()).unwrap();
        assert_eq!(harnesses[..4], ["echo", "openai", "anthropic", "exec"]);
        // Python 0.19.1's runner announces these; a Python server looks for them.
        for name in [
            "claude-sdk",
            "openai-agents",
            "open-responses",
            "codex",
            "pi",
            "claude-native",
        ] {
            assert!(
                harnesses.iter().any(|h| h == name),
                "{name} missing from {harnesses:?}"
            );
        }
        assert_eq!(hello["capabilities"], serde_json::json!([]));
        assert_eq!(hello["envs"], serde_json::json!([]));
        assert_eq!(hello["telemetry_opt_out"], true);
        assert_eq!(hello["frame_protocol_version"], 1);
    }

    #[test]
    fn each_harness_gets_its_own_vendor_settings() {
        let vars = [
            ("OMNIGENT_MODEL", "m"),
            ("OPENAI_BASE_URL", "http://openai"),
            ("OPENAI_API_KEY", "ok"),
            ("ANTHROPIC_BASE_URL", "http://anthropic"),
            ("ANTHROPIC_API_KEY", "ak"),
            ("OMNIGENT_EXEC_COMMAND", "claude -p"),
        ];
        let env = HarnessEnv::from_vars(|n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        });
        let openai = env.config_for(HarnessKind::OpenAi);
        assert_eq!(openai.base_url.as_deref(), Some("http://openai"));
        assert_eq!(openai.api_key.as_deref(), Some("ok"));
        assert_eq!(openai.exec_command, None);
        let anthropic = env.config_for(HarnessKind::Anthropic);
        assert_eq!(anthropic.api_key.as_deref(), Some("ak"));
        assert_eq!(anthropic.base_url.as_deref(), Some("http://anthropic"));
        assert_eq!(anthropic.model.as_deref(), Some("m"));
        let exec = env.config_for(HarnessKind::Exec);
        assert_eq!(exec.exec_command.unwrap(), vec!["claude", "-p"]);
        assert_eq!(exec.api_key, None);
    }

    #[test]
    fn the_wire_api_override_is_read_and_a_bad_value_ignored() {
        use harness::openai::WireApi;
        let env = HarnessEnv::from_vars(|n| {
            (n == "OMNIGENT_OPENAI_WIRE_API").then(|| "Responses".into())
        });
        assert_eq!(env.openai_wire_api, Some(WireApi::Responses));
        let env =
            HarnessEnv::from_vars(|n| (n == "OMNIGENT_OPENAI_WIRE_API").then(|| "grpc".into()));
        assert_eq!(env.openai_wire_api, None);
    }

    /// The daemon reports `configured_harnesses` from the proto table; whatever single variable makes it say
    /// `true` for a harness must be one this runner reads for that harness.
    #[test]
    fn every_credential_the_daemon_counts_is_one_the_runner_reads() {
        for kind in HarnessKind::ALL {
            for cred in kind.spec().credentials {
                let get = |n: &str| (n == cred.var).then(|| "secret".to_owned());
                // A CLI harness counts its credentials once its binary is found.
                let found = |_| {
                    Some(harness_table::CliProbe {
                        binary: Some("/bin/true".into()),
                        version: Some("1".into()),
                        logged_in: false,
                    })
                };
                let reported = harness_table::configured_harnesses(get, found);
                assert_eq!(reported[kind.name()], true, "{}", cred.var);
                let config = HarnessEnv::from_vars(get).config_for(kind);
                let read = config.api_key.or(config.auth_token);
                assert_eq!(read.as_deref(), Some("secret"), "{} is not read", cred.var);
            }
        }
        // The case of issue 10: only ANTHROPIC_AUTH_TOKEN, sent as a bearer token.
        let get = |n: &str| (n == "ANTHROPIC_AUTH_TOKEN").then(|| "tok".to_owned());
        assert_eq!(
            harness_table::configured_harnesses(get, |_| None)["anthropic"],
            true
        );
        let config = HarnessEnv::from_vars(get).config_for(HarnessKind::Anthropic);
        assert_eq!(config.auth_token.as_deref(), Some("tok"));
        assert_eq!(config.api_key, None);
    }
}
