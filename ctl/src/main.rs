//! `omnigent`: the one binary. Every role (CLI, daemon, server, runner) is a subcommand; the daemon re-executes
//! this binary to spawn the others. This is the only crate that prints to the terminal or installs tracing.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backend;
mod daemon_cmd;
mod exit;
mod host_cmd;
mod logging;
mod packaging_cmd;
mod run_cmd;
mod runner_cmd;
mod server_run;
mod service_cmd;

/// Run coding agents on your machine; watch and co-drive them from a browser, a phone or a teammate's laptop.
#[derive(Debug, Parser)]
#[command(name = "omnigent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the daemon and the local server (on 127.0.0.1), or reuse the running ones.
    Start(backend::StartArgs),
    /// Stop runners, the local server and the daemon; returns once every process is gone.
    Stop(backend::StopArgs),
    /// Stop everything, then start again (picks up a new omnigent binary).
    Restart(backend::StartArgs),
    /// Show the daemon, the local server, targets, runners and log paths.
    Status(backend::JsonArgs),
    /// Print (or follow) a log: the daemon's, the server's, or a runner's.
    Logs(backend::LogsArgs),
    /// The per-user host daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// The coordination server.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Run one runner: dial a server's runner tunnel and serve sessions with agent harnesses.
    Runner(runner_cmd::Args),
    /// Register this machine as a host of a server (the local one by default) and run its sessions' runners.
    Host(host_cmd::HostArgs),
    /// Start a session on this machine and stream the agent's answer (interactive without PROMPT).
    Run(run_cmd::RunArgs),
    /// Co-drive an existing session from this terminal.
    Attach(run_cmd::AttachArgs),
    /// Print a shell completion script (`omnigent completions bash > ~/.local/share/bash-completion/completions/omnigent`).
    Completions(packaging_cmd::CompletionsArgs),
    /// Write the man pages into DIR (what packaging runs).
    #[command(hide = true)]
    Man(packaging_cmd::ManArgs),
}

#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// Run the daemon in this process (what `omnigent start` spawns; use --foreground under a terminal or
    /// systemd).
    Run(daemon_cmd::RunArgs),
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Run the server in the foreground (SQLite in the data dir by default). Stops on SIGTERM or Ctrl-C.
    Run(server_run::Args),
    /// Start the local server through the daemon (starting the daemon if needed).
    Start(backend::JsonArgs),
    /// Show the local server the daemon runs.
    Status(backend::JsonArgs),
    /// Stop the local server (the daemon keeps running).
    Stop(backend::StopArgs),
}

fn main() -> ExitCode {
    exit::exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start(args) => backend::start(args),
        Command::Stop(args) => backend::stop(args),
        Command::Restart(args) => backend::restart(args),
        Command::Status(args) => backend::status(args),
        Command::Logs(args) => backend::logs(args),
        Command::Daemon(DaemonCommand::Run(args)) => daemon_cmd::run(args),
        Command::Server(ServerCommand::Run(args)) => server_run::run(args),
        Command::Server(ServerCommand::Start(args)) => backend::server_start(args),
        Command::Server(ServerCommand::Status(args)) => backend::server_status(args),
        Command::Server(ServerCommand::Stop(args)) => backend::server_stop(args),
        Command::Runner(args) => runner_cmd::run(args),
        Command::Host(args) => host_cmd::run(args),
        Command::Run(args) => run_cmd::run(args),
        Command::Attach(args) => run_cmd::attach(args),
        Command::Completions(args) => packaging_cmd::completions(args),
        Command::Man(args) => packaging_cmd::man(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => exit::report(&err),
    }
}
