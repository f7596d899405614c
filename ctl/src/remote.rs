//! The CLI's HTTP client of a server's public API, local or remote (`--server URL`): the stored device token
//! (`credentials.json`, written by `omnigent login`) goes in `Authorization: Bearer` on every request to a
//! server that is not on loopback, and a 401 from one is a configuration error (exit 78) naming
//! `omnigent login URL`. The token is never printed.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use omnigent_proto::auth::Role;
use omnigent_proto::credentials::{self, Credentials};
use omnigent_proto::paths::Paths;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::exit::ConfigError;

/// Largest answer body read into memory (device lists, sessions).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// One server, and the token to present to it.
#[derive(Clone)]
pub(crate) struct Server {
    /// `http(s)://host[:port][/prefix]`, no trailing slash.
    pub base: String,
    /// Whether the server is on this machine's loopback (we are its owner: no token).
    pub loopback: bool,
    token: Option<String>,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Whether `url`'s host is a loopback address or `localhost`.
pub(crate) fn is_loopback(url: &str) -> bool {
    let Some(origin) = credentials::origin(url) else {
        return false;
    };
    let authority = origin.split_once("://").map_or("", |(_, a)| a);
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The stored token for `url`, if any (the file's errors are told: a broken file is worth fixing).
pub(crate) fn stored_token(paths: &Paths, url: &str) -> Result<Option<String>> {
    let all =
        Credentials::load(&paths.credentials_file()).map_err(|e| ConfigError(e.to_string()))?;
    Ok(all.get(url).map(|c| c.token.clone()))
}

/// The message of a 401 from `base`.
pub(crate) fn login_hint(base: &str) -> String {
    format!(
        "the server {base} does not know this device (HTTP 401); pair it: run `omnigent share` on the \
         server's machine and then `omnigent login {base} --code CODE` here"
    )
}

impl Server {
    /// The server at `base`, with the token stored for it unless it is on loopback.
    pub(crate) fn new(paths: &Paths, base: &str) -> Result<Server> {
        let base = base.trim_end_matches('/').to_owned();
        let loopback = is_loopback(&base);
        let token = if loopback {
            None
        } else {
            stored_token(paths, &base)?
        };
        Server::with_token(base, token)
    }

    /// The server at `base`, presenting `token` (none: anonymous, as `login` is).
    pub(crate) fn with_token(base: String, token: Option<String>) -> Result<Server> {
        let loopback = is_loopback(&base);
        let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if loopback {
            // Never send loopback through a proxy.
            http = http.no_proxy();
        }
        let http = http.build().context("cannot build the HTTP client")?;
        Ok(Server {
            base: base.trim_end_matches('/').to_owned(),
            loopback,
            token,
            http,
        })
    }

    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// A request to `path` with the token.
    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Send, and read a JSON answer (`Null` for an empty one); errors say what failed with the server's
    /// message; 401 is a [`ConfigError`] naming `omnigent login`.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let what = format!("{method} {path}");
        let mut req = self.request(method, path).timeout(Duration::from_secs(60));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{what}: cannot reach {}", self.base))?;
        self.answer(resp, &what).await
    }

    /// The JSON of a finished answer, or the error it carries.
    pub(crate) async fn answer(&self, resp: reqwest::Response, what: &str) -> Result<Value> {
        let status = resp.status();
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp
            .chunk()
            .await
            .with_context(|| format!("{what}: reading the answer"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER_BYTES {
                bail!("{what}: the answer is larger than {MAX_ANSWER_BYTES} bytes");
            }
        }
        let v: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(v);
        }
        Err(self.refusal(status, &v, &body, what))
    }

    /// The error for a refused request.
    pub(crate) fn refusal(
        &self,
        status: StatusCode,
        v: &Value,
        body: &[u8],
        what: &str,
    ) -> anyhow::Error {
        let message = v["error"]["message"]
            .as_str()
            .or(v["message"].as_str())
            .or(v["detail"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        if status == StatusCode::UNAUTHORIZED && !self.loopback {
            return self.not_paired(Some(&message));
        }
        // A role refusal does not go away by retrying: a configuration error (exit 78) naming the role.
        if status == StatusCode::FORBIDDEN
            && let Some(role) = v["error"]["required_role"].as_str()
        {
            return ConfigError(format!(
                "{what}: HTTP 403: {message}; {}",
                role_hint(&self.base, role)
            ))
            .into();
        }
        anyhow!("{what}: HTTP {status}: {message}")
    }

    /// The error for a caller the server does not know (a 401, or `/v1/info` naming no role): exit 78 naming
    /// `omnigent login URL`. `message` is the server's own reason, when it gave one (an expired device).
    pub(crate) fn not_paired(&self, message: Option<&str>) -> anyhow::Error {
        let hint = if self.has_token() {
            let why = message
                .filter(|m| m.contains("expired"))
                .map_or("it was revoked or expired".to_owned(), |m| {
                    m.chars().take(300).collect()
                });
            format!(
                "the server {} refused this device's token (HTTP 401: {why}); pair again: `omnigent login {} \
                 --code CODE` with a code from `omnigent share`",
                self.base, self.base
            )
        } else {
            login_hint(&self.base)
        };
        ConfigError(hint).into()
    }

    /// This device's role on the server, from `GET /v1/info` (`auth.role`): `Ok(None)` from a server that has
    /// no roles (a Python omnigent); a server of ours that names no role does not know this device, which is
    /// [`Server::not_paired`].
    pub(crate) async fn role(&self) -> Result<Option<Role>> {
        let info = self.call(Method::GET, "/v1/info", None).await?;
        if info.get("auth").is_none_or(Value::is_null) {
            return Ok(None);
        }
        match info["auth"]["role"].as_str().and_then(Role::parse) {
            Some(role) => Ok(Some(role)),
            None => Err(self.not_paired(None)),
        }
    }
}

/// What to do about a missing role: who can grant it.
pub(crate) fn role_hint(base: &str, role: &str) -> String {
    match role {
        "owner" => format!("only the owner of {base} may do that"),
        _ => format!(
            "ask the owner of {base} for a {role} code (`omnigent share --role {role}` on the server's machine), \
             then `omnigent login {base} --code CODE`"
        ),
    }
}
