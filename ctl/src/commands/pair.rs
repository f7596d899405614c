//! Device pairing (issue 13): `omnigent share` asks a server (the local one, as its owner on loopback, or
//! `--server URL` with the stored owner token) for a one-time pairing code and prints the URLs that carry it,
//! with a QR code; `omnigent login URL` exchanges a code for a device token stored in `credentials.json`;
//! `omnigent logout URL` forgets it; `omnigent devices` lists, revokes and renames devices. No command ever
//! prints a token.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result, anyhow, bail};
use omnigent_proto::auth::MAX_DEVICE_TTL_SECS;
use omnigent_proto::credentials::{self, Credential, Credentials};
use omnigent_proto::paths::Paths;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend::{self, client_err, paths, print_json};
use crate::exit::ConfigError;
use crate::remote::Server;

/// The roles a pairing code may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShareRole {
    /// Watch sessions: list, read, stream, see who else is watching.
    Viewer,
    /// Viewer, and send messages, interrupt, create sessions.
    Driver,
    /// Register as a host of the server and run its sessions' runners (`omnigent host URL`).
    Host,
}

impl ShareRole {
    fn as_str(self) -> &'static str {
        match self {
            ShareRole::Viewer => "viewer",
            ShareRole::Driver => "driver",
            ShareRole::Host => "host",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ShareArgs {
    /// What the paired device may do.
    #[arg(long, value_enum, default_value = "viewer")]
    role: ShareRole,
    /// How long the code stays valid: `90s`, `10m`, `2h` or seconds (at most 24h).
    #[arg(long, default_value = "10m", value_parser = parse_ttl)]
    ttl: u64,
    /// How long the device it pairs stays paired, from its pairing: `12h`, `30d`… (at most 3650d). Default:
    /// until it is revoked (`omnigent devices revoke ID`).
    #[arg(long, value_name = "DURATION", value_parser = parse_device_ttl)]
    device_ttl: Option<u64>,
    /// Land the paired browser on this session.
    #[arg(long)]
    session: Option<String>,
    /// A remote server you own (default: the local server, started if needed).
    #[arg(long)]
    server: Option<String>,
    /// Print the server's answer as JSON (schema in docs/cli.md).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The server: `http(s)://host[:port][/prefix]`.
    url: String,
    /// The pairing code `omnigent share` printed (asked for when missing).
    #[arg(long)]
    code: Option<String>,
    /// This device's name on the server (default: this machine's host name).
    #[arg(long)]
    name: Option<String>,
    /// Print the device as JSON (schema in docs/cli.md; never the token).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The server whose stored token to forget.
    url: String,
}

#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    #[command(subcommand)]
    command: Option<DevicesCommand>,
    /// A remote server you own (default: the local server).
    #[arg(long, global = true)]
    server: Option<String>,
    /// Print JSON (schema in docs/cli.md).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum DevicesCommand {
    /// List the paired devices (the default).
    List,
    /// Revoke a device: its token stops working and its open streams close.
    Revoke { id: String },
    /// Rename a device.
    Rename { id: String, name: String },
}

/// `10m` → 600: a number with `s`, `m`, `h` or (`days`) `d`, or plain seconds.
fn parse_duration(s: &str, days: bool) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let examples = if days { "12h or 30d" } else { "90s, 10m or 2h" };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. {examples}"))?;
    Ok(match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" if days => n.saturating_mul(24 * 3600),
        _ if days => return Err(format!("{s:?}: the unit must be s, m, h or d")),
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    })
}

/// `--ttl`: 1 s to 24 h.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let secs = parse_duration(s, false)?;
    if secs == 0 || secs > 24 * 3600 {
        return Err(format!("{s:?}: a pairing code lasts between 1s and 24h"));
    }
    Ok(secs)
}

/// `--device-ttl`: 1 s to [`MAX_DEVICE_TTL_SECS`].
fn parse_device_ttl(s: &str) -> Result<u64, String> {
    let secs = parse_duration(s, true)?;
    if secs == 0 || secs > MAX_DEVICE_TTL_SECS {
        return Err(format!(
            "{s:?}: a device stays paired between 1s and {}d",
            MAX_DEVICE_TTL_SECS / 86_400
        ));
    }
    Ok(secs)
}

/// The server a command talks to: `--server URL` (with its stored token), else the local server (started
/// if needed; loopback, so we are its owner).
async fn target(paths: &Paths, server: Option<&str>) -> Result<Server> {
    match server {
        Some(url) => Server::new(paths, &crate::commands::host::check_url(url.trim())?),
        None => {
            let (mut client, _) = backend::connect_or_start(paths).await?;
            let status = client.server_start().await.map_err(client_err)?;
            let url = status
                .url
                .ok_or_else(|| anyhow!("the local server runs but reports no URL"))?;
            Server::new(paths, &url)
        }
    }
}

pub fn share(args: ShareArgs) -> Result<()> {
    let paths = paths()?;
    backend::runtime()?.block_on(async {
        let server = target(&paths, args.server.as_deref()).await?;
        let mut body = json!({
            "role": args.role.as_str(),
            "ttl_seconds": args.ttl,
            "session_id": args.session,
            "name": Value::Null,
        });
        if let Some(t) = args.device_ttl {
            body["device_ttl_seconds"] = t.into();
        }
        let code = server
            .call(Method::POST, "/v1/pairing/codes", Some(&body))
            .await
            .context("cannot create a pairing code")?;
        if args.json {
            return print_json(&code);
        }
        print_share(&server, &code, args.role);
        Ok(())
    })
}

fn print_share(server: &Server, code: &Value, role: ShareRole) {
    let text = code["code"].as_str().unwrap_or("?");
    let expires = code["expires_at"].as_i64().unwrap_or(0);
    let urls: Vec<&str> = code["urls"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let what = match role {
        ShareRole::Viewer => "watch sessions",
        ShareRole::Driver => "watch sessions and send messages",
        ShareRole::Host => "register as a host and run sessions",
    };
    println!(
        "Pairing code {text} (role: {}, may {what}; single use, expires {}).",
        role.as_str(),
        expires_in(expires)
    );
    match code["device_ttl_seconds"].as_u64() {
        Some(t) => println!(
            "The device it pairs stays paired for {} (then it must pair again).",
            span(t)
        ),
        None => println!("The device it pairs stays paired until you revoke it."),
    }
    if urls.iter().all(|u| crate::remote::is_loopback(u)) {
        eprintln!(
            "note: the server listens on loopback only, so no other device can reach it; run `omnigent \
             restart --lan` (or `omnigent server run --bind ADDR`) first"
        );
    }
    for (i, url) in urls.iter().enumerate() {
        println!("Open on the device: {url}");
        if i == 0 {
            match qr(url) {
                Some(q) => println!("{q}"),
                None => eprintln!("note: the URL is too long for a QR code"),
            }
        }
    }
    let login_url = urls
        .first()
        .and_then(|u| u.split_once("/pair#").map(|(b, _)| b.to_owned()))
        .unwrap_or_else(|| server.base.clone());
    println!("From another computer's terminal: omnigent login {login_url} --code {text}");
}

/// The QR code of `text` in Unicode half blocks, light on dark (what most terminals show).
fn qr(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `in 9m 58s`.
fn expires_in(at: i64) -> String {
    let left = at - now_secs();
    if left <= 0 {
        return "now".to_owned();
    }
    format!(
        "in {}",
        crate::backend::duration_text(left.unsigned_abs().saturating_mul(1000))
    )
}

/// `45s`, `9m58s`, `5h00m`, `30d`.
fn span(secs: u64) -> String {
    if secs >= 2 * 86_400 {
        format!("{}d", secs / 86_400)
    } else {
        crate::backend::duration_text(secs.saturating_mul(1000))
    }
}

/// A device's expiry as the list shows it: `never`, `in 29d`, `expired`.
fn expiry(at: Option<i64>) -> String {
    match at {
        None => "never".to_owned(),
        Some(t) if t <= now_secs() => "expired".to_owned(),
        Some(t) => format!("in {}", span((t - now_secs()).unsigned_abs())),
    }
}

/// `3m ago`, `never`.
fn ago(at: Option<i64>) -> String {
    match at {
        None => "never".to_owned(),
        Some(t) => {
            let d = (now_secs() - t).max(0).unsigned_abs();
            format!(
                "{} ago",
                crate::backend::duration_text(d.saturating_mul(1000))
            )
        }
    }
}

fn host_name() -> String {
    omnigent_daemon::config::hostname()
}

/// The code from `--code`, else one line of stdin (prompted on a terminal).
fn read_code(code: Option<String>) -> Result<String> {
    let code = match code {
        Some(c) => c,
        None => {
            if std::io::stdin().is_terminal() {
                eprint!("Pairing code (from `omnigent share` on the server's machine): ");
                let _ = std::io::stderr().flush();
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the pairing code from stdin")?;
            line
        }
    };
    let code = code.trim().to_ascii_uppercase();
    if code.is_empty() {
        return Err(ConfigError(
            "no pairing code: pass --code CODE (run `omnigent share` on the server's machine to get one)"
                .to_owned(),
        )
        .into());
    }
    if code.len() > 64 {
        return Err(ConfigError("that is not a pairing code (too long)".to_owned()).into());
    }
    Ok(code)
}

pub fn login(args: LoginArgs) -> Result<()> {
    let paths = paths()?;
    let url = crate::commands::host::check_url(args.url.trim())?;
    let origin = credentials::origin(&url)
        .ok_or_else(|| ConfigError(format!("{url:?} is not a server URL")))?;
    let code = read_code(args.code)?;
    let name = args.name.unwrap_or_else(host_name);
    backend::runtime()?.block_on(async {
        let server = Server::with_token(url.clone(), None)?;
        let claim = server
            .call(
                Method::POST,
                "/v1/pairing/claim",
                Some(&json!({"code": code, "name": name, "client": "cli"})),
            )
            .await
            .with_context(|| format!("cannot pair with {url}"))?;
        let token = claim["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("the server {url} paired this device but sent no token"))?;
        let device = &claim["device"];
        let cred = Credential {
            token: token.to_owned(),
            device_id: device["id"].as_str().unwrap_or_default().to_owned(),
            device_name: device["name"].as_str().unwrap_or(&name).to_owned(),
            role: device["role"].as_str().unwrap_or_default().to_owned(),
            stored_at: now_secs(),
        };
        let file = paths.credentials_file();
        let mut all = Credentials::load(&file).map_err(|e| ConfigError(e.to_string()))?;
        all.servers.insert(origin.clone(), cred.clone());
        all.store(&file).map_err(|e| anyhow!("{e}"))?;
        // Who the server says we are now, with the stored token.
        let me = Server::new(&paths, &url)?;
        let info = me.call(Method::GET, "/v1/info", None).await.ok();
        let role = info
            .as_ref()
            .and_then(|i| i["auth"]["role"].as_str())
            .unwrap_or(&cred.role)
            .to_owned();
        if args.json {
            return print_json(&json!({
                "server": origin,
                "device": device,
                "role": role,
                "session_id": claim["session_id"],
                "credentials": file.display().to_string(),
            }));
        }
        println!(
            "Logged in to {origin} as '{}' ({}), role {role}.",
            cred.device_name, cred.device_id
        );
        println!("  token stored in {} (mode 0600)", file.display());
        match role.as_str() {
            "host" => println!("Next: omnigent host {url}"),
            "owner" => println!("Next: omnigent share --server {url}"),
            _ => println!("Next: omnigent attach SESSION --server {url}"),
        }
        Ok(())
    })
}

pub fn logout(args: LogoutArgs) -> Result<()> {
    let paths = paths()?;
    let url = crate::commands::host::check_url(args.url.trim())?;
    let origin = credentials::origin(&url)
        .ok_or_else(|| ConfigError(format!("{url:?} is not a server URL")))?;
    let file = paths.credentials_file();
    let mut all = Credentials::load(&file).map_err(|e| ConfigError(e.to_string()))?;
    match all.servers.remove(&origin) {
        Some(c) => {
            all.store(&file).map_err(|e| anyhow!("{e}"))?;
            println!(
                "Forgot the token for {origin} (device '{}', {}). The server still lists the device until its \
                 owner revokes it: `omnigent devices revoke {}`.",
                c.device_name, c.device_id, c.device_id
            );
        }
        None => println!("No token stored for {origin}."),
    }
    Ok(())
}

pub fn devices(args: DevicesArgs) -> Result<()> {
    let paths = paths()?;
    backend::runtime()?.block_on(async {
        let server = target(&paths, args.server.as_deref()).await?;
        match args.command.unwrap_or(DevicesCommand::List) {
            DevicesCommand::List => {
                let list = server
                    .call(Method::GET, "/v1/devices", None)
                    .await
                    .context("cannot list the devices")?;
                if args.json {
                    return print_json(&list);
                }
                let rows = list["data"].as_array().cloned().unwrap_or_default();
                if rows.is_empty() {
                    println!("No paired devices. Pair one with `omnigent share`.");
                    return Ok(());
                }
                println!(
                    "{:<28} {:<24} {:<7} {:<14} EXPIRES",
                    "ID", "NAME", "ROLE", "LAST SEEN"
                );
                for d in rows {
                    println!(
                        "{:<28} {:<24} {:<7} {:<14} {}",
                        d["id"].as_str().unwrap_or("?"),
                        d["name"].as_str().unwrap_or("?"),
                        d["role"].as_str().unwrap_or("?"),
                        ago(d["last_seen_at"].as_i64()),
                        expiry(d["expires_at"].as_i64())
                    );
                }
                Ok(())
            }
            DevicesCommand::Revoke { id } => {
                check_id(&id)?;
                server
                    .call(Method::DELETE, &format!("/v1/devices/{id}"), None)
                    .await
                    .with_context(|| format!("cannot revoke device {id}"))?;
                if args.json {
                    return print_json(&json!({"revoked": id}));
                }
                println!(
                    "Revoked device {id}: its token no longer works and its streams are closed."
                );
                Ok(())
            }
            DevicesCommand::Rename { id, name } => {
                check_id(&id)?;
                if name.trim().is_empty() {
                    bail!("the new name is empty");
                }
                let device = server
                    .call(
                        Method::PATCH,
                        &format!("/v1/devices/{id}"),
                        Some(&json!({"name": name.trim()})),
                    )
                    .await
                    .with_context(|| format!("cannot rename device {id}"))?;
                if args.json {
                    return print_json(&device);
                }
                println!(
                    "Renamed device {id} to '{}'.",
                    device["name"].as_str().unwrap_or(&name)
                );
                Ok(())
            }
        }
    })
}

/// A device id goes into a URL path: no `/`, `?` or the like.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ConfigError(format!(
            "{id:?} is not a device id; `omnigent devices` lists them"
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_device_ttl, parse_ttl};

    #[test]
    fn ttls_take_a_unit_and_are_bounded() {
        assert_eq!(parse_ttl("10m"), Ok(600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("2h"), Ok(7200));
        assert_eq!(parse_ttl("45"), Ok(45));
        assert!(parse_ttl("0m").is_err());
        assert!(parse_ttl("25h").is_err());
        assert!(parse_ttl("10d").is_err());
        assert!(parse_ttl("m").is_err());
        assert_eq!(parse_device_ttl("30d"), Ok(30 * 86_400));
        assert_eq!(parse_device_ttl("12h"), Ok(12 * 3600));
        assert!(parse_device_ttl("0d").is_err());
        assert!(parse_device_ttl("3651d").is_err());
        assert!(parse_device_ttl("1w").is_err());
    }
}
