//! Paired devices and pairing codes (issue 13): who is calling from off this machine, and how a device gets
//! its token.
//!
//! - A device token is `omd_` + 43 characters of base64url (32 random bytes). The store keeps only its sha256;
//!   a presented token is hashed and compared, in constant time, with every device's hash.
//! - A pairing code is `XXXX-XXXX` over 32 characters without 0/O/1/I (40 bits), single use, with an expiry;
//!   it lives only in memory. Peek and claim share one budget of [`MAX_WRONG_GUESSES`] wrong codes per
//!   [`GUESS_WINDOW`] per source address; past it every attempt from that address is refused, right or wrong.
//! - Revoking a device cancels its [`DeviceIdentity::revoked`] token: every stream and WebSocket opened with it
//!   waits on that token and ends. A device paired with a lifetime (`device_ttl_seconds` of its code) has an
//!   `expires_at`: from then on its token is refused ([`AuthError::Expired`]) and one task per such device
//!   cancels the same token at that time, so its streams end as on a revocation. Expiries are judged by the
//!   server's [`Clock`].
//!
//! One mutex guards the in-memory state, held only for short synchronous sections (never across `.await`);
//! the store is written after it is released.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use omnigent_proto::auth::{Device, Role, TOKEN_PREFIX};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::{DeviceRow, Store, StoreError};

/// Wrong pairing codes one source address may send per [`GUESS_WINDOW`].
pub const MAX_WRONG_GUESSES: usize = 5;
pub const GUESS_WINDOW: Duration = Duration::from_secs(60);
/// `last_seen_at` is written at most this often per device.
pub const LAST_SEEN_EVERY_SECS: i64 = 60;
/// Longest device name kept (characters).
pub const MAX_NAME_CHARS: usize = 100;
/// The id of the owner device `OMNIGENT_OWNER_TOKEN` creates.
pub const OWNER_TOKEN_DEVICE_ID: &str = "dev_owner_env";

const CODE_ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
/// Most pairing codes waiting at once (a flood of `share` calls cannot grow memory without bound).
const MAX_PENDING_CODES: usize = 1000;
/// Most source addresses whose guesses are remembered.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Who a request comes from, once its token checked out.
#[derive(Clone)]
pub struct DeviceIdentity {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Cancelled when the device is revoked or expires.
    pub revoked: CancellationToken,
}

/// Why a presented token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No device has this token (never paired, revoked, mistyped).
    Unknown,
    /// The device's pairing ended at `at` (epoch seconds).
    Expired { at: i64 },
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Why a pairing attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error(
        "this pairing code is wrong, already used or expired; ask the owner for a new one (`omnigent share`)"
    )]
    Invalid,
    #[error(
        "too many wrong pairing codes from this address; wait a minute, then type the code again carefully"
    )]
    TooManyAttempts,
    #[error("too many pairing codes are waiting to be used; wait for some to expire or be claimed")]
    TooManyCodes,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A code waiting to be claimed.
#[derive(Debug, Clone)]
pub struct PendingCode {
    pub role: Role,
    pub session_id: Option<String>,
    pub name: Option<String>,
    /// Epoch seconds.
    pub expires_at: i64,
    /// The lifetime of the device it pairs, from its pairing.
    pub device_ttl_secs: Option<u64>,
}

/// The devices and pairing codes of this server.
#[derive(Clone, Default)]
pub struct Devices {
    inner: Arc<Mutex<State>>,
    clock: Clock,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Devices")
    }
}

#[derive(Default)]
struct State {
    devices: Vec<Entry>,
    codes: HashMap<String, PendingCode>,
    wrong_guesses: HashMap<IpAddr, VecDeque<Instant>>,
}

struct Entry {
    row: DeviceRow,
    role: Role,
    hash: [u8; 32],
    revoked: CancellationToken,
}

impl Entry {
    fn new(row: DeviceRow) -> Option<Entry> {
        let role = Role::parse(&row.role)?;
        let bytes = hex::decode(&row.token_sha256).ok()?;
        let hash: [u8; 32] = bytes.try_into().ok()?;
        Some(Entry {
            row,
            role,
            hash,
            revoked: CancellationToken::new(),
        })
    }

    fn device(&self) -> Device {
        device_of(&self.row, self.role)
    }
}

fn device_of(row: &DeviceRow, role: Role) -> Device {
    Device {
        id: row.id.clone(),
        name: row.name.clone(),
        role,
        created_at: row.created_at,
        last_seen_at: row.last_seen_at,
        expires_at: row.expires_at,
    }
}

/// A new random device token.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn new_code() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let chars: String = bytes
        .iter()
        .map(|b| char::from(CODE_ALPHABET[usize::from(b % 32)]))
        .collect();
    format!("{}-{}", &chars[..4], &chars[4..])
}

/// A typed code as stored: upper case, `-` and spaces dropped, the dash put back after 4 characters.
fn normalize_code(code: &str) -> Option<String> {
    let clean: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (clean.len() == 8 && clean.bytes().all(|b| CODE_ALPHABET.contains(&b)))
        .then(|| format!("{}-{}", &clean[..4], &clean[4..]))
}

/// A device name as kept: trimmed, control characters dropped, at most [`MAX_NAME_CHARS`].
pub fn clean_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect::<String>()
        .trim()
        .to_owned()
}

impl Devices {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_secs(&self) -> i64 {
        self.clock.now_secs()
    }

    /// Load the devices of `store` (at start); expiries are judged by `clock`.
    pub async fn load(store: &Store, clock: Clock) -> Result<Devices, StoreError> {
        let rows = store.list_devices().await?;
        let devices = Devices {
            inner: Arc::default(),
            clock,
        };
        let entries: Vec<Entry> = rows
            .into_iter()
            .filter_map(|row| {
                let id = row.id.clone();
                let entry = Entry::new(row);
                if entry.is_none() {
                    tracing::warn!(device = %id, "ignoring a device row with an unknown role or a bad hash");
                }
                entry
            })
            .collect();
        for e in &entries {
            devices.watch_expiry(e);
        }
        devices.lock().devices = entries;
        Ok(devices)
    }

    /// A device with an expiry: its streams are told to end when it comes (the task ends early if the
    /// device is revoked first).
    fn watch_expiry(&self, entry: &Entry) {
        let Some(at) = entry.row.expires_at else {
            return;
        };
        let clock = self.clock.clone();
        let ended = entry.revoked.clone();
        let id = entry.row.id.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = clock.until(at) => {
                    tracing::info!(device = %id, "a device's pairing expired; its streams are closed");
                    ended.cancel();
                }
                () = ended.cancelled() => {}
            }
        });
    }

    /// Whether some device has the owner role.
    pub fn has_owner(&self) -> bool {
        self.lock().devices.iter().any(|e| e.role == Role::Owner)
    }

    /// Create or update the owner device whose token is `token` (`OMNIGENT_OWNER_TOKEN`).
    pub async fn set_owner_token(&self, store: &Store, token: &str) -> Result<(), StoreError> {
        let row = DeviceRow {
            id: OWNER_TOKEN_DEVICE_ID.to_owned(),
            name: "owner (OMNIGENT_OWNER_TOKEN)".to_owned(),
            role: Role::Owner.as_str().to_owned(),
            token_sha256: hex::encode(hash_token(token)),
            created_at: self.now_secs(),
            last_seen_at: None,
            expires_at: None,
        };
        store.upsert_device(&row).await?;
        let mut state = self.lock();
        if let Some(old) = state
            .devices
            .iter()
            .position(|e| e.row.id == OWNER_TOKEN_DEVICE_ID)
        {
            let old = state.devices.remove(old);
            if old.row.token_sha256 != row.token_sha256 {
                old.revoked.cancel();
            }
        }
        state.devices.extend(Entry::new(row));
        Ok(())
    }

    /// The device `token` belongs to, if it is valid and unexpired. Records when the device was last seen
    /// (in the store at most once per [`LAST_SEEN_EVERY_SECS`], off the caller's path).
    pub fn authenticate(&self, token: &str, store: &Store) -> Result<DeviceIdentity, AuthError> {
        let presented = hash_token(token.trim());
        let now = self.now_secs();
        let (identity, touch) = {
            let mut state = self.lock();
            // Every hash is compared, so the time taken says nothing about which one matched.
            let mut found = None;
            for (i, e) in state.devices.iter().enumerate() {
                if constant_time_eq(&e.hash, &presented) {
                    found = Some(i);
                }
            }
            let entry = found
                .and_then(|i| state.devices.get_mut(i))
                .ok_or(AuthError::Unknown)?;
            if let Some(at) = entry.row.expires_at.filter(|at| *at <= now) {
                return Err(AuthError::Expired { at });
            }
            let touch = entry
                .row
                .last_seen_at
                .is_none_or(|at| now - at >= LAST_SEEN_EVERY_SECS);
            if touch {
                entry.row.last_seen_at = Some(now);
            }
            let identity = DeviceIdentity {
                id: entry.row.id.clone(),
                name: entry.row.name.clone(),
                role: entry.role,
                revoked: entry.revoked.clone(),
            };
            (identity, touch)
        };
        if touch {
            let store = store.clone();
            let id = identity.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_device(&id, now).await {
                    tracing::debug!(device = %id, "cannot record when a device was last seen: {e}");
                }
            });
        }
        Ok(identity)
    }

    /// Every device, oldest first.
    pub fn list(&self) -> Vec<Device> {
        self.lock().devices.iter().map(Entry::device).collect()
    }

    /// Rename a device; `None` when there is no such device.
    pub async fn rename(
        &self,
        store: &Store,
        id: &str,
        name: &str,
    ) -> Result<Option<Device>, StoreError> {
        if !store.rename_device(id, name).await? {
            return Ok(None);
        }
        let mut state = self.lock();
        let entry = state.devices.iter_mut().find(|e| e.row.id == id);
        Ok(entry.map(|e| {
            e.row.name = name.to_owned();
            e.device()
        }))
    }

    /// Revoke a device: its row is deleted and every stream and WebSocket it opened is told to close.
    /// False when there is no such device.
    pub async fn revoke(&self, store: &Store, id: &str) -> Result<bool, StoreError> {
        let existed = store.delete_device(id).await?;
        let removed = {
            let mut state = self.lock();
            let at = state.devices.iter().position(|e| e.row.id == id);
            at.map(|at| state.devices.remove(at))
        };
        if let Some(entry) = &removed {
            entry.revoked.cancel();
        }
        Ok(existed || removed.is_some())
    }

    /// A new pairing code for `role`, valid for `ttl`; the device it pairs stays paired for `device_ttl` (else
    /// until revoked).
    pub fn create_code(
        &self,
        role: Role,
        ttl: Duration,
        session_id: Option<String>,
        name: Option<String>,
        device_ttl: Option<Duration>,
    ) -> Result<(String, PendingCode), PairingError> {
        let now = self.now_secs();
        let mut state = self.lock();
        state.codes.retain(|_, c| c.expires_at > now);
        if state.codes.len() >= MAX_PENDING_CODES {
            return Err(PairingError::TooManyCodes);
        }
        let pending = PendingCode {
            role,
            session_id,
            name,
            expires_at: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            device_ttl_secs: device_ttl.map(|t| t.as_secs()),
        };
        let code = loop {
            let code = new_code();
            if !state.codes.contains_key(&code) {
                break code;
            }
        };
        state.codes.insert(code.clone(), pending.clone());
        Ok((code, pending))
    }

    /// What `code` would pair, without using it up.
    pub fn peek(&self, code: &str, from: IpAddr) -> Result<PendingCode, PairingError> {
        let now = self.now_secs();
        self.lock().check(code, from, false, now)
    }

    /// Use `code` up: a new device with its role. Answers the device, its token and the code's session.
    pub async fn claim(
        &self,
        store: &Store,
        code: &str,
        from: IpAddr,
        name: &str,
    ) -> Result<(Device, String, Option<String>), PairingError> {
        let now = self.now_secs();
        let pending = self.lock().check(code, from, true, now)?;
        let token = new_token();
        let mut id_bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut id_bytes);
        let row = DeviceRow {
            id: format!("dev_{}", hex::encode(id_bytes)),
            name: name.to_owned(),
            role: pending.role.as_str().to_owned(),
            token_sha256: hex::encode(hash_token(&token)),
            created_at: now,
            last_seen_at: Some(now),
            expires_at: pending
                .device_ttl_secs
                .map(|t| now.saturating_add(i64::try_from(t).unwrap_or(i64::MAX))),
        };
        store.upsert_device(&row).await?;
        let device = device_of(&row, pending.role);
        if let Some(entry) = Entry::new(row) {
            self.watch_expiry(&entry);
            self.lock().devices.push(entry);
        }
        Ok((device, token, pending.session_id))
    }
}

impl State {
    /// The guess budget, then the code (expired at `now_s`, epoch seconds); `consume` removes it.
    fn check(
        &mut self,
        code: &str,
        from: IpAddr,
        consume: bool,
        now_s: i64,
    ) -> Result<PendingCode, PairingError> {
        let from = from.to_canonical();
        let now = Instant::now();
        if let Some(times) = self.wrong_guesses.get_mut(&from) {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= GUESS_WINDOW)
            {
                times.pop_front();
            }
            if times.len() >= MAX_WRONG_GUESSES {
                return Err(PairingError::TooManyAttempts);
            }
        }
        let found = normalize_code(code).and_then(|c| {
            let valid = self.codes.get(&c).is_some_and(|p| p.expires_at > now_s);
            if !valid {
                self.codes.remove(&c);
                return None;
            }
            if consume {
                self.codes.remove(&c)
            } else {
                self.codes.get(&c).cloned()
            }
        });
        match found {
            Some(pending) => Ok(pending),
            None => {
                if self.wrong_guesses.len() >= MAX_TRACKED_ADDRESSES {
                    self.wrong_guesses.retain(|_, t| {
                        t.back()
                            .is_some_and(|last| now.duration_since(*last) < GUESS_WINDOW)
                    });
                }
                self.wrong_guesses.entry(from).or_default().push_back(now);
                Err(PairingError::Invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_codes_have_their_shape() {
        let t = new_token();
        assert!(t.starts_with("omd_") && t.len() == 4 + 43, "{t}");
        assert_ne!(t, new_token());
        let c = new_code();
        assert_eq!(c.len(), 9);
        assert_eq!(normalize_code(&c.to_lowercase()), Some(c.clone()));
        assert_eq!(normalize_code(&c.replace('-', " ")), Some(c));
        assert_eq!(normalize_code("0OI1-ABCD"), None);
        assert!(!CODE_ALPHABET.iter().any(|b| b"0O1I".contains(b)));
    }
}
