//! The config task: owns the config in force, reloads `config.toml` when it changes and makes the edits
//! clients ask for (`[[targets]]` kept or dropped), one at a time, so edits and reloads never interleave.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::SetLogLevel;
use crate::config::{self, Config};
use crate::hosting::targets;

/// The config in force, the last reload error, and how many loads succeeded.
#[derive(Debug, Clone)]
pub struct ConfigView {
    pub config: Config,
    pub error: Option<String>,
    pub loads: u64,
}

impl ConfigView {
    pub(crate) fn targets(&self) -> targets::ConfigTargets {
        targets::ConfigTargets {
            loads: self.loads,
            urls: self.config.targets.iter().map(|t| t.url.clone()).collect(),
        }
    }
}

/// An edit of config.toml asked for over the control API. The config task makes it, so edits and reloads
/// never interleave and the config in force includes the edit when the reply comes.
pub(crate) enum ConfigEdit {
    AddTarget(String),
    RemoveTarget(String),
}

/// What an edit did: whether the file changed, and the config targets in force after it.
pub(crate) struct EditOutcome {
    pub changed: bool,
    pub targets: targets::ConfigTargets,
}

pub(crate) type ConfigEditRequest = (
    ConfigEdit,
    oneshot::Sender<Result<EditOutcome, config::ConfigError>>,
);

/// Apply config.toml `targets` (at boot and on every reload).
pub(crate) async fn follow_config_targets(
    mut config: watch::Receiver<ConfigView>,
    targets: targets::Targets,
    stop: CancellationToken,
) {
    let mut current: Option<Vec<String>> = None;
    loop {
        let next = config.borrow_and_update().targets();
        if current.as_ref() != Some(&next.urls) {
            current = Some(next.urls.clone());
            if targets
                .cmds
                .send(targets::TargetCmd::SetConfig(next))
                .await
                .is_err()
            {
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = config.changed() => if changed.is_err() { return },
        }
    }
}

/// Owns the config in force: reloads the file when it changes and makes the edits clients ask for, one at
/// a time.
pub(crate) struct ConfigTask {
    pub path: PathBuf,
    pub view: watch::Sender<ConfigView>,
    pub port: watch::Sender<u16>,
    pub revision: watch::Sender<u64>,
    pub on_log_level: Option<SetLogLevel>,
}

impl ConfigTask {
    pub(crate) async fn run(
        self,
        mut changes: mpsc::Receiver<()>,
        mut edits: mpsc::Receiver<ConfigEditRequest>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => {
                    if change.is_none() {
                        return;
                    }
                    tokio::time::sleep(config::RELOAD_SETTLE).await;
                    // Drain what arrived while settling: one reload reads the newest content.
                    while changes.try_recv().is_ok() {}
                    self.reload();
                }
                Some((edit, reply)) = edits.recv() => {
                    let _ = reply.send(self.edit(edit));
                }
            }
        }
    }

    fn reload(&self) {
        match config::load(&self.path) {
            Ok(new) => {
                if let Err(e) = self.install(new) {
                    self.failed(e);
                }
            }
            Err(e) => self.failed(e),
        }
    }

    fn edit(&self, edit: ConfigEdit) -> Result<EditOutcome, config::ConfigError> {
        let edited = match &edit {
            ConfigEdit::AddTarget(url) => config::add_target(&self.path, url),
            ConfigEdit::RemoveTarget(url) => config::remove_target(&self.path, url),
        }?;
        if edited.changed {
            match &edit {
                ConfigEdit::AddTarget(url) => {
                    tracing::info!(path = %self.path.display(), server = %url, "kept a host target in config")
                }
                ConfigEdit::RemoveTarget(url) => {
                    tracing::info!(path = %self.path.display(), server = %url, "removed a host target from config")
                }
            }
        }
        // The file as it is now is the config in force (the reload its write triggers finds nothing new).
        self.install(edited.config)?;
        Ok(EditOutcome {
            changed: edited.changed,
            targets: self.view.borrow().targets(),
        })
    }

    /// Make `new` the config in force, unless it equals it.
    fn install(&self, mut new: Config) -> Result<(), config::ConfigError> {
        let new_port = new.server_port()?;
        let current = self.view.borrow().clone();
        // The host identity never changes under a running daemon: an edit that drops it keeps the one in
        // force (it is generated once, at boot).
        new.host.host_id = new.host.host_id.or(current.config.host.host_id.clone());
        new.host.name = new.host.name.or(current.config.host.name.clone());
        if current.config == new && current.error.is_none() {
            return Ok(());
        }
        tracing::info!(path = %self.path.display(), "config reloaded");
        if new.log_level != current.config.log_level
            && let (Some(level), Some(apply)) = (&new.log_level, &self.on_log_level)
        {
            apply(level);
        }
        self.port
            .send_if_modified(|p| std::mem::replace(p, new_port) != new_port);
        self.view.send_replace(ConfigView {
            config: new,
            error: None,
            loads: current.loads + 1,
        });
        self.revision.send_modify(|r| *r += 1);
        Ok(())
    }

    fn failed(&self, e: config::ConfigError) {
        tracing::warn!("config reload failed: {e}");
        let message = e.to_string();
        if self.view.borrow().error.as_deref() == Some(message.as_str()) {
            return;
        }
        self.view.send_modify(|v| v.error = Some(message));
        self.revision.send_modify(|r| *r += 1);
    }
}
