//! `omnigent`: the one binary. Every role (CLI, daemon, server, runner) is a subcommand; the daemon re-executes
//! this binary to spawn the others. This is the only crate that prints to the terminal or installs tracing.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backend;
mod commands;
mod exit;
mod logging;
mod remote;
mod signals;

use commands::{agents, daemon, host, logs, packaging, pair, run, runner, server};

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
    Start(daemon::StartArgs),
    /// Stop runners, the local server and the daemon; returns once every process is gone.
    Stop(backend::StopArgs),
    /// Stop everything, then start again (picks up a new omnigent binary).
    Restart(daemon::StartArgs),
    /// Show the daemon, the local server, targets, runners and log paths.
    Status(backend::JsonArgs),
    /// Print (or follow) a log: the daemon's, the server's, or a runner's.
    Logs(logs::LogsArgs),
    /// The per-user host daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// The coordination server.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Run one runner: dial a server's runner tunnel and serve sessions with agent harnesses.
    Runner(runner::Args),
    /// Register this machine as a host of a server (the local one by default) and run its sessions' runners.
    Host(host::HostArgs),
    /// Start a session on this machine (a built-in agent, or the agent at PATH) and stream its answer (interactive
    /// without PROMPT).
    Run(run::RunArgs),
    /// Co-drive an existing session from this terminal.
    Attach(run::AttachArgs),
    /// List the server's agents, built-in and uploaded (`agents [list] [--json]`); check an agent (`agents check PATH`).
    Agents(agents::AgentsArgs),
    /// Pair a device: print a one-time code, the URL(s) that carry it and a QR code (`--role viewer|driver|host`).
    Share(pair::ShareArgs),
    /// Pair this computer with a remote server using a code from `omnigent share`; stores the device token.
    Login(pair::LoginArgs),
    /// Forget the device token stored for a server.
    Logout(pair::LogoutArgs),
    /// List, revoke or rename the devices paired with a server you own.
    Devices(pair::DevicesArgs),
    /// Print a shell completion script (`omnigent completions bash > ~/.local/share/bash-completion/completions/omnigent`).
    Completions(packaging::CompletionsArgs),
    /// Write the man pages into DIR (what packaging runs).
    #[command(hide = true)]
    Man(packaging::ManArgs),
}

#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// Run the daemon in this process (what `omnigent start` spawns; use --foreground under a terminal or
    /// systemd).
    Run(daemon::RunArgs),
}

#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Run the server in the foreground (SQLite in the data dir by default). Stops on SIGTERM or Ctrl-C.
    Run(server::Args),
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
        Command::Start(args) => daemon::start(args),
        Command::Stop(args) => daemon::stop(args),
        Command::Restart(args) => daemon::restart(args),
        Command::Status(args) => daemon::status(args),
        Command::Logs(args) => logs::run(args),
        Command::Daemon(DaemonCommand::Run(args)) => daemon::run(args),
        Command::Server(ServerCommand::Run(args)) => server::run(args),
        Command::Server(ServerCommand::Start(args)) => server::start(args),
        Command::Server(ServerCommand::Status(args)) => server::status(args),
        Command::Server(ServerCommand::Stop(args)) => server::stop(args),
        Command::Runner(args) => runner::run(args),
        Command::Host(args) => host::run(args),
        Command::Run(args) => run::run(args),
        Command::Attach(args) => run::attach(args),
        Command::Agents(args) => agents::agents(args),
        Command::Share(args) => pair::share(args),
        Command::Login(args) => pair::login(args),
        Command::Logout(args) => pair::logout(args),
        Command::Devices(args) => pair::devices(args),
        Command::Completions(args) => packaging::completions(args),
        Command::Man(args) => packaging::man(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => exit::report(&err),
    }
}
