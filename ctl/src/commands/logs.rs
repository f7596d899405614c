//! `omnigent logs`: print (or follow) the daemon's, the server's or a runner's log.

use anyhow::Result;

use crate::backend::{paths, runtime};
use crate::exit::ConfigError;

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Which log: `daemon`, `server`, or `runner <ID>`.
    #[arg(default_value = "daemon")]
    which: String,
    /// The runner id, with `runner`.
    id: Option<String>,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    follow: bool,
    /// How many of the last lines to print first.
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: usize,
}

pub fn run(args: LogsArgs) -> Result<()> {
    let paths = paths()?;
    let dir = paths.logs_dir();
    let path = match (args.which.as_str(), &args.id) {
        ("daemon", None) => dir.join("daemon.log"),
        ("server", None) => dir.join("server.log"),
        ("runner", Some(id)) => {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ConfigError(format!("{id:?} is not a runner id")).into());
            }
            dir.join("runners").join(format!("{id}.log"))
        }
        ("runner", None) => {
            return Err(ConfigError("`omnigent logs runner` needs a runner id".into()).into());
        }
        (other, _) => {
            return Err(ConfigError(format!(
                "unknown log {other:?}: use daemon, server or runner <ID>"
            ))
            .into());
        }
    };
    if !path.exists() && !args.follow {
        anyhow::bail!(
            "{} does not exist yet (has that process run?)",
            path.display()
        );
    }
    // Where following starts, taken before the tail is read: a line written in between is printed twice
    // rather than lost.
    let end = std::fs::metadata(&path).map(|m| m.len()).ok();
    for line in omnigent_daemon::config::logfile::tail_lines(&path, args.lines) {
        println!("{line}");
    }
    if args.follow {
        runtime()?.block_on(omnigent_daemon::config::logfile::follow(
            &path,
            end,
            |bytes| {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush()).is_ok()
            },
        ))?;
    }
    Ok(())
}
