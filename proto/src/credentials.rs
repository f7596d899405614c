//! The device tokens this machine holds for remote servers (`credentials.json` in the config dir, mode 0600):
//! written by `omnigent login URL`, removed by `omnigent logout URL`, read by the CLI for `--server URL`
//! calls and by the daemon each time it dials a host target. One file, keyed by the server's origin
//! ([`origin`]), written atomically (a temporary file in the same directory, then a rename).
//!
//! The token is a secret: [`Credential`]'s `Debug` never prints it, and nothing here logs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Largest credentials file we read (a handful of servers fit in a few KiB).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One server's device token and what the server said about the device when it was claimed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// `omd_…`, sent as `Authorization: Bearer`.
    pub token: String,
    pub device_id: String,
    pub device_name: String,
    /// `viewer`, `driver`, `host` or `owner`.
    pub role: String,
    /// Epoch seconds when it was stored.
    pub stored_at: i64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"[redacted]")
            .field("device_id", &self.device_id)
            .field("device_name", &self.device_name)
            .field("role", &self.role)
            .finish()
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// By origin (`http://10.0.0.2:6767`).
    #[serde(default)]
    pub servers: BTreeMap<String, Credential>,
}

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "cannot read {path}: {source}; fix its permissions or delete it and run `omnigent login URL` again"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a credentials file ({reason}); delete it and run `omnigent login URL` again"
    )]
    Invalid { path: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The origin a server URL is keyed by: scheme (`ws`→`http`, `wss`→`https`) and host lowercased, the port
/// kept unless it is the scheme's default, no path, query or fragment. `None` for what is not an http(s) or
/// ws(s) URL.
pub fn origin(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // No user info in a key (and none should be in a server URL).
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "http" { ":80" } else { ":443" };
    if let Some(stripped) = authority.strip_suffix(default_port) {
        authority = stripped.to_owned();
    }
    Some(format!("{scheme}://{authority}"))
}

impl Credentials {
    /// The file at `path`, or an empty set when it does not exist.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let shown = || path.display().to_string();
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Credentials::default());
            }
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: shown(),
                    source,
                });
            }
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_FILE_BYTES), &mut text)
            .map_err(|source| CredentialsError::Read {
                path: shown(),
                source,
            })?;
        serde_json::from_str(&text).map_err(|e| CredentialsError::Invalid {
            path: shown(),
            reason: e.to_string(),
        })
    }

    /// The credential for the server at `url` (any URL of it: keyed by [`origin`]).
    pub fn get(&self, url: &str) -> Option<&Credential> {
        self.servers.get(&origin(url)?)
    }

    /// Write the set to `path` atomically, mode 0600, creating the directory (0700) if needed.
    pub fn store(&self, path: &Path) -> Result<(), CredentialsError> {
        let err = |source| CredentialsError::Write {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(err)?;
        let tmp = dir.join(format!(
            ".credentials.json.{}.{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = (|| {
            let mut file = options.open(&tmp)?;
            let mut text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
            text.push(b'\n');
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }
}

/// The token stored for the server at `url` in the file at `path`, if any (a file that cannot be read
/// counts as none: the server's 401 then says to log in).
pub fn token_for(path: &Path, url: &str) -> Option<String> {
    Credentials::load(path)
        .ok()?
        .get(url)
        .map(|c| c.token.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn origins_ignore_path_case_default_port_and_ws_scheme() {
        assert_eq!(
            origin("HTTP://Box.LAN:6767/omni/v1?x#y").as_deref(),
            Some("http://box.lan:6767")
        );
        assert_eq!(
            origin("wss://team.example.com:443/").as_deref(),
            Some("https://team.example.com")
        );
        assert_eq!(
            origin("ws://10.0.0.1:80").as_deref(),
            Some("http://10.0.0.1")
        );
        assert_eq!(origin("ftp://x"), None);
        assert_eq!(origin("http://"), None);
    }

    #[test]
    fn store_is_private_and_round_trips_and_debug_hides_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config/credentials.json");
        assert_eq!(Credentials::load(&path).unwrap(), Credentials::default());
        let mut c = Credentials::default();
        let cred = Credential {
            token: "omd_secret".into(),
            device_id: "d1".into(),
            device_name: "laptop".into(),
            role: "host".into(),
            stored_at: 1,
        };
        assert!(!format!("{cred:?}").contains("omd_secret"));
        c.servers
            .insert(origin("http://10.0.0.1:6767").unwrap(), cred);
        c.store(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            token_for(&path, "http://10.0.0.1:6767/v1/x").as_deref(),
            Some("omd_secret")
        );
        assert_eq!(token_for(&path, "http://10.0.0.2:6767"), None);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
