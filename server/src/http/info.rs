//! Health, boot and directory endpoints (reference §1.1, §1.3).

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use omnigent_proto::api::{
    HealthResponse, IMPLEMENTATION, Liveness, Me, ServerInfo, SessionLiveness,
};
use omnigent_proto::ids::canonical_id;
use serde::Deserialize;
use serde_json::{Map, json as json_value};

use super::auth::Caller;
use super::{ApiError, AppState, Q, json};
use omnigent_proto::auth::{AuthInfo, DeviceRef, Role};

/// Most ids one `/health?session_ids=` asks about (the sidebar batches its visible rows).
const MAX_HEALTH_IDS: usize = 500;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HealthQuery {
    session_id: Option<String>,
    session_ids: Option<String>,
}

/// Whether `caller` may see the server's inside (sessions' liveness, storage, pid, database): anyone who may
/// read sessions. `/health` and `/v1/info` are public, but a caller off loopback without such a device gets
/// only what a login screen or a load balancer needs.
fn sees_details(caller: &Caller) -> bool {
    caller.role.is_some_and(|r| r.satisfies(Role::Viewer))
}

pub async fn health(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<HealthQuery>,
) -> Result<Response, ApiError> {
    let storage = storage_health(&st).await;
    let mut out = HealthResponse {
        // Still 200 while writes fail: supervisors restart on `/health`, and a restart frees no disk.
        // Healthy, the answer is the reference's `{"status":"ok"}`, byte for byte.
        status: if storage.ok { "ok" } else { "degraded" }.to_owned(),
        session: None,
        sessions: None,
        storage: (!storage.ok).then_some(storage),
    };
    if !sees_details(&caller) {
        // `{"status":…}` only: no session's or runner's state, no storage detail.
        out.storage = None;
        return Ok(json(StatusCode::OK, &out));
    }
    if let Some(raw) = q.session_id.as_deref().filter(|s| !s.is_empty()) {
        let liveness = liveness_of(&st, &[raw.to_owned()]).await?;
        out.session = Some(SessionLiveness {
            id: raw.to_owned(),
            liveness: liveness
                .into_iter()
                .next()
                .map(|(_, l)| l)
                .unwrap_or_else(missing),
        });
    }
    if let Some(raw) = q.session_ids.as_deref() {
        let ids: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if ids.len() > MAX_HEALTH_IDS {
            return Err(ApiError::invalid(format!(
                "session_ids lists {} ids; ask about at most {MAX_HEALTH_IDS} at a time",
                ids.len()
            )));
        }
        out.sessions = Some(liveness_of(&st, &ids).await?.into_iter().collect());
    }
    Ok(json(StatusCode::OK, &out))
}

/// Liveness per requested id (as given). omnigent reports an unknown id as `runner_online: true`.
async fn liveness_of(
    st: &AppState,
    raw_ids: &[String],
) -> Result<Vec<(String, Liveness)>, ApiError> {
    let canonical: Vec<String> = raw_ids.iter().filter_map(|r| canonical_id(r)).collect();
    let rows = st.store.existing_sessions(&canonical).await?;
    let by_id: BTreeMap<&str, &crate::store::SessionRow> =
        rows.iter().map(|r| (r.id.as_str(), r)).collect();
    Ok(raw_ids
        .iter()
        .map(|raw| {
            let row = canonical_id(raw).and_then(|c| by_id.get(c.as_str()).copied());
            let liveness = match row {
                Some(row) => Liveness {
                    runner_online: row
                        .runner_id
                        .as_deref()
                        .is_some_and(|r| st.sessions.runners().is_online(r)),
                    host_online: row
                        .host_id
                        .as_deref()
                        .map(|h| st.hosts.registry().is_online(h)),
                    host_version: row
                        .host_id
                        .as_deref()
                        .and_then(|h| st.hosts.registry().get(h))
                        .map(|c| c.hello().version.clone()),
                },
                None => missing(),
            };
            (raw.clone(), liveness)
        })
        .collect())
}

/// Whether durable writes succeed; while they fail, one probe write first, so the answer clears as soon as
/// the disk takes writes again.
async fn storage_health(st: &AppState) -> omnigent_proto::api::StorageHealth {
    st.store.probe_storage().await;
    st.store.storage_health()
}

fn missing() -> Liveness {
    Liveness {
        runner_online: true,
        host_online: None,
        host_version: None,
    }
}

pub async fn version() -> Response {
    json(
        StatusCode::OK,
        &json_value!({ "version": omnigent_proto::BUILD_VERSION }),
    )
}

pub async fn info(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let details = sees_details(&caller);
    let info = ServerInfo {
        accounts_enabled: false,
        single_user: true,
        login_url: None,
        needs_setup: false,
        sharing_mode: "disabled".to_owned(),
        server_version: omnigent_proto::BUILD_VERSION.to_owned(),
        features: Map::new(),
        implementation: Some(IMPLEMENTATION.to_owned()),
        pid: details.then(std::process::id),
        database: details.then(|| st.database.to_string()),
        started_at: details.then_some(st.started_at),
        session_count: if details {
            Some(st.store.count_sessions().await?)
        } else {
            None
        },
        storage: if details {
            Some(storage_health(&st).await)
        } else {
            None
        },
        auth: Some(AuthInfo {
            required: !caller.local_owner,
            roles: Role::ALL.to_vec(),
            role: caller.role,
            device: caller.device.as_ref().map(|d| DeviceRef {
                id: d.id.clone(),
                name: d.name.clone(),
            }),
        }),
    };
    Ok(json(StatusCode::OK, &info))
}

/// `GET /v1/me`: `local` for the owner on this machine, else the paired device (admin only as owner).
pub async fn me(Extension(caller): Extension<Caller>) -> Response {
    let me = match &caller.device {
        Some(d) => Me {
            user_id: Some(d.id.clone()),
            is_admin: d.role == Role::Owner,
        },
        None => Me {
            user_id: Some("local".to_owned()),
            is_admin: true,
        },
    };
    json(StatusCode::OK, &me)
}
