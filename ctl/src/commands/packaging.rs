//! `omnigent completions bash|zsh|fish|…` (clap_complete) and the hidden `omnigent man DIR` (clap_mangen: one
//! page per command), which packaging runs to build the Debian package's completions and man pages.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Where to write omnigent.1 and one page per command (created if missing).
    dir: PathBuf,
}

pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "omnigent", &mut out);
    crate::exit::out(&String::from_utf8_lossy(&out));
    Ok(())
}

pub fn man(args: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(crate::Cli::command(), &args.dir)
        .with_context(|| format!("cannot write the man pages into {}", args.dir.display()))
}
