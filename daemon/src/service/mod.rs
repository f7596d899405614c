//! The daemon as a service of the user's init system: a systemd user unit (Linux) or a launchd agent (macOS).
//!
//! - [`render`]: the unit and the plist, rendered from the templates in `packaging/` (the one source of truth,
//!   compiled into the binary), and the minimal environment written into them (never a secret).
//! - [`record`]: the install record `enable` leaves beside `config.toml` (paths and content hashes), so
//!   `disable` removes exactly what was installed and `status` tells an edited or stale unit.
//! - [`supervisor`]: calling `systemctl --user`, `launchctl` and `loginctl`, and who started this process.
//!
//! The names are the Python omnigent's (`omnigent-host.service`, `ai.omnigent.host`), so one replaces the
//! other and either uninstaller finds the other's file. Like the rest of this crate it never prints: `ctl`
//! (`ctl`'s `commands::service`) does.

pub mod record;
pub mod render;
pub mod supervisor;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The systemd user unit's name.
pub const SYSTEMD_UNIT: &str = "omnigent-host.service";
/// The launchd agent's label (and the plist's file stem).
pub const LAUNCHD_LABEL: &str = "ai.omnigent.host";
/// Written into the unit's environment (`systemd` / `launchd`), so the daemon knows who started it even where
/// the init system sets no variable of its own.
pub const SUPERVISOR_ENV: &str = "OMNIGENT_SUPERVISOR";

/// Which init system runs the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    Systemd,
    Launchd,
}

impl Init {
    /// The platform's own: launchd on macOS, systemd elsewhere.
    pub fn native() -> Init {
        if cfg!(target_os = "macos") {
            Init::Launchd
        } else {
            Init::Systemd
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::Launchd => "launchd",
        }
    }

    pub fn parse(s: &str) -> Option<Init> {
        match s {
            "systemd" => Some(Init::Systemd),
            "launchd" => Some(Init::Launchd),
            _ => None,
        }
    }

    /// "systemd user service omnigent-host.service" / "launchd agent ai.omnigent.host".
    pub fn describe(self) -> String {
        match self {
            Init::Systemd => format!("systemd user service {SYSTEMD_UNIT}"),
            Init::Launchd => format!("launchd agent {LAUNCHD_LABEL}"),
        }
    }
}

/// A snapshot of the environment variables (tests pass their own).
pub type Env = BTreeMap<String, String>;

/// This process's environment (values that are not UTF-8 are left out: they cannot be written into a unit).
pub fn current_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Where the unit (plist) lives: `$XDG_CONFIG_HOME/systemd/user/omnigent-host.service` (else
/// `~/.config/systemd/user/…`), or `~/Library/LaunchAgents/ai.omnigent.host.plist`. `None` without a home.
pub fn unit_path(init: Init, env: &Env) -> Option<PathBuf> {
    let home = env.get("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
    match init {
        Init::Systemd => {
            let config = env
                .get("XDG_CONFIG_HOME")
                .filter(|d| d.starts_with('/'))
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".config")))?;
            Some(config.join("systemd").join("user").join(SYSTEMD_UNIT))
        }
        Init::Launchd => Some(
            home?
                .join("Library")
                .join("LaunchAgents")
                .join(format!("{LAUNCHD_LABEL}.plist")),
        ),
    }
}

/// Something about the service could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "cannot find a home directory (HOME is not set), so there is no place for the {0} file"
    )]
    NoHome(&'static str),
    #[error("cannot run `{command}`: {source}; is {init} installed and running for this user?")]
    Spawn {
        command: String,
        init: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){}", if .output.is_empty() { String::new() } else { format!(": {}", .output) })]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid install record ({why}); remove it if the service is gone")]
    BadRecord { path: PathBuf, why: String },
}

/// An [`Env`] from pairs (tests).
#[cfg(test)]
pub(crate) fn env_of(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use env_of as env;

    #[test]
    fn the_unit_goes_under_xdg_config_home_when_set_else_under_dot_config() {
        assert_eq!(
            unit_path(Init::Systemd, &env(&[("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.config/systemd/user/omnigent-host.service")
        );
        assert_eq!(
            unit_path(
                Init::Systemd,
                &env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")])
            )
            .unwrap(),
            PathBuf::from("/x/systemd/user/omnigent-host.service")
        );
        assert_eq!(
            unit_path(Init::Launchd, &env(&[("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/Library/LaunchAgents/ai.omnigent.host.plist")
        );
        assert!(unit_path(Init::Launchd, &env(&[])).is_none());
    }
}
