//! Devices, roles and pairing (ours; issue 13, contract in `lan-contract.md`): who may do what on a server
//! reached from off its machine. A loopback peer is the owner; every other peer presents a device token, as
//! the cookie [`COOKIE_NAME`] (browsers; [`SECURE_COOKIE_NAME`] over HTTPS) or `Authorization: Bearer`
//! (the CLI, hosts).

use serde::{Deserialize, Serialize};

/// The device cookie over plain HTTP.
pub const COOKIE_NAME: &str = "omnigent_device";
/// The device cookie over HTTPS (`Secure`, `Path=/`, no `Domain`: the `__Host-` rules).
pub const SECURE_COOKIE_NAME: &str = "__Host-omnigent_device";
/// Every device token starts with this, then 43 characters of base64url (32 random bytes).
pub const TOKEN_PREFIX: &str = "omd_";

/// What a device may do. `viewer` ⊂ `driver` ⊂ `owner`; `host` may only register as a host (and read
/// `/v1/me`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Driver,
    Host,
    Owner,
}

impl Role {
    /// Every role, in the order `/v1/info` lists them.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Driver, Role::Host, Role::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Driver => "driver",
            Role::Host => "host",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may do what `needed` allows.
    pub fn satisfies(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Owner, _) => true,
            (Role::Driver, Role::Viewer | Role::Driver) => true,
            (have, want) => have == want,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A paired device (`GET /v1/devices`). Times are epoch seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// `GET /v1/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    pub data: Vec<Device>,
}

/// `PATCH /v1/devices/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePatch {
    pub name: String,
}

/// `device` of [`AuthInfo`]: who the caller is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRef {
    pub id: String,
    pub name: String,
}

/// `auth` of `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthInfo {
    /// Whether a request from this caller's address needs a device token (false on loopback).
    pub required: bool,
    pub roles: Vec<Role>,
    /// The caller's role; `null` for an unpaired caller.
    pub role: Option<Role>,
    pub device: Option<DeviceRef>,
}

/// `POST /v1/pairing/codes` (owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingCodeRequest {
    pub role: Role,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// A name for the device, prefilled on the pairing page.
    #[serde(default)]
    pub name: Option<String>,
    /// How long the device this code pairs stays paired (seconds from its pairing, at most
    /// [`MAX_DEVICE_TTL_SECS`]); absent: until it is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ttl_seconds: Option<u64>,
}

/// Longest `device_ttl_seconds` a pairing code may carry (10 years).
pub const MAX_DEVICE_TTL_SECS: u64 = 3650 * 24 * 3600;

/// Default lifetime of a pairing code.
pub const DEFAULT_PAIRING_TTL_SECS: u64 = 600;
/// Longest lifetime a pairing code may be given.
pub const MAX_PAIRING_TTL_SECS: u64 = 24 * 3600;

/// The answer of `POST /v1/pairing/codes` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingCode {
    /// `XXXX-XXXX` (no 0/O/1/I).
    pub code: String,
    pub role: Role,
    pub session_id: Option<String>,
    /// Epoch seconds.
    pub expires_at: i64,
    /// `http://<address>:<port>/pair#code=…[&session=…]`, one per non-loopback listening address and the
    /// public URL.
    pub urls: Vec<String>,
    /// The device's lifetime from its pairing, when the code sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ttl_seconds: Option<u64>,
}

/// `POST /v1/pairing/peek`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingPeekRequest {
    pub code: String,
}

/// The answer of `POST /v1/pairing/peek`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingPeek {
    pub role: Role,
    pub session_id: Option<String>,
    pub expires_at: i64,
    /// The name the owner suggested, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The device's lifetime from its pairing, when the code sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ttl_seconds: Option<u64>,
}

/// Who claims a code: a browser gets a cookie, a CLI the token in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairingClient {
    Browser,
    Cli,
}

/// `POST /v1/pairing/claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingClaimRequest {
    pub code: String,
    #[serde(default)]
    pub name: Option<String>,
    pub client: PairingClient,
}

/// The answer of `POST /v1/pairing/claim`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingClaim {
    pub device: Device,
    pub session_id: Option<String>,
    /// Only for `client: "cli"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for PairingClaim {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingClaim")
            .field("device", &self.device)
            .field("session_id", &self.session_id)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn roles_include_what_they_should() {
        use Role::*;
        let yes = [
            (Owner, Viewer),
            (Owner, Driver),
            (Owner, Host),
            (Owner, Owner),
            (Driver, Viewer),
            (Driver, Driver),
            (Viewer, Viewer),
            (Host, Host),
        ];
        for have in Role::ALL {
            for want in Role::ALL {
                assert_eq!(
                    have.satisfies(want),
                    yes.contains(&(have, want)),
                    "{have} for {want}"
                );
            }
        }
        assert_eq!(Role::parse("driver"), Some(Driver));
        assert_eq!(Role::parse("admin"), None);
    }
}
