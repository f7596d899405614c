//! `omnigent runner`: one runner process. Dials the server's runner tunnel and serves sessions until SIGTERM or
//! Ctrl-C; a refusal no retry can fix (protocol mismatch, rejected token) exits 78.

use std::path::PathBuf;

use anyhow::{Context, Result};
use omnigent_runner::CancellationToken;
use omnigent_runner::harness::HarnessKind;
use omnigent_runner::{RunnerConfig, RunnerError};

/// The runner's silent-server limit in ms (see docs/cli.md, environment).
const IDLE_ENV: &str = "OMNIGENT_RUNNER_IDLE_TIMEOUT_MS";

use crate::exit::ConfigError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server to serve: http(s)://host:port[/prefix].
    #[arg(long, env = "OMNIGENT_SERVER", default_value = "http://127.0.0.1:6767")]
    server: String,
    /// Binding token issued by the server (the runner id derives from it). Without one, the runner dials as a
    /// random id, which only a loopback server accepts.
    #[arg(long, env = "OMNIGENT_RUNNER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Workspace of sessions whose init names none (default: the current directory).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// Harness of sessions whose init names none: echo, openai, anthropic or exec.
    #[arg(long, default_value = "echo")]
    harness: String,
}

pub fn run(args: Args) -> Result<()> {
    crate::logging::init_process();
    let harness = HarnessKind::parse(&args.harness)
        .map_err(|e| ConfigError(format!("{e}; pass one of them to --harness")))?;
    let workspace = match args.workspace {
        Some(dir) => dir,
        None => {
            std::env::current_dir().context("cannot read the current directory for --workspace")?
        }
    };
    if !workspace.is_dir() {
        return Err(ConfigError(format!(
            "workspace {} is not a directory; pass an existing --workspace",
            workspace.display()
        ))
        .into());
    }
    let mut config = RunnerConfig::new(args.server, args.token, workspace, harness);
    // The name as given (`openai-agents`…): its defaults (the OpenAI wire API) follow the name, not the kind.
    config.harness_name = Some(args.harness.clone());
    // Test/tuning knob: how long a silent server is tolerated before the runner redials (default 90 s).
    if let Some(ms) = std::env::var(IDLE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
    {
        config.tunnel.idle_timeout = Some(std::time::Duration::from_millis(ms));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match omnigent_runner::run(config, shutdown).await {
            Ok(()) => Ok(()),
            Err(
                err @ (RunnerError::BadServerUrl { .. }
                | RunnerError::Refused { .. }
                | RunnerError::Unauthorized { .. }),
            ) => Err(ConfigError(err.to_string()).into()),
        }
    })
}

/// Cancel `shutdown` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    crate::signals::stop_requested().await;
    shutdown.cancel();
}
