//! Host routes (reference omnigent-server-v1.md §1.3, §3.7): the host tunnel, the host list, launching a
//! runner on a host, and the workspace picker's filesystem calls proxied through the tunnel.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use omnigent_proto::api::{ErrorCode, HostList};
use omnigent_proto::ids::canonical_id;
use omnigent_tunnel::host::{HostConnection, HostRequestError};
use omnigent_tunnel::{TunnelUpgrade, UpgradeRejection};
use serde::Deserialize;
use serde_json::json as json_value;

use super::{ApiError, AppState, JsonBody, Q, json, session_id};
use crate::hosts::{self, request_error};

/// Default page of `GET …/filesystem` (the host's default), and the largest.
const DEFAULT_LIST_LIMIT: u32 = 20;
const MAX_LIST_LIMIT: u32 = 1000;

/// Longest path accepted from a client.
const MAX_PATH_BYTES: usize = 4096;

/// `GET /v1/hosts/{host_id}/tunnel`: upgrade, then the tunnel's own rules in [`omnigent_tunnel::host`] and
/// [`omnigent_tunnel::auth`] (a bad id 400 before the upgrade; a foreign `Origin` closed 4403 before any frame;
/// `host.hello` first within the pre-hello cap, protocol check, newest connection wins, pings, 90 s liveness).
/// The owner is always `"local"` on a server without accounts, so no host id is ever refused for belonging to
/// someone else.
pub async fn tunnel(
    State(st): State<AppState>,
    Path(host_id): Path<String>,
    headers: HeaderMap,
    ws: Result<TunnelUpgrade, UpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => {
            omnigent_tunnel::host::upgrade(ws, host_id, &headers, st.hosts.registry().clone())
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// `GET /v1/hosts`.
pub async fn list(State(st): State<AppState>) -> Result<Response, ApiError> {
    let hosts = st.hosts.list().await?;
    Ok(json(
        StatusCode::OK,
        &HostList {
            hosts: hosts.iter().map(hosts::HostView::info).collect(),
        },
    ))
}

/// `GET /v1/hosts/{host_id}`: the list entry plus `runners`.
pub async fn get_one(
    State(st): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = canonical_id(&raw).ok_or_else(|| host_not_found(&raw))?;
    let view = st
        .hosts
        .get(&id)
        .await?
        .ok_or_else(|| host_not_found(&raw))?;
    let mut body = serde_json::to_value(view.info()).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("runners".to_owned(), json_value!([]));
    }
    Ok(json(StatusCode::OK, &body))
}

fn host_not_found(raw: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("host `{raw}` not found; GET /v1/hosts lists the hosts that ever connected"),
    )
}

/// The live tunnel of a host: 404 when the host never connected, 409 when it is offline.
async fn live_host(st: &AppState, raw: &str) -> Result<HostConnection, ApiError> {
    let id = canonical_id(raw).ok_or_else(|| host_not_found(raw))?;
    if let Some(conn) = st.hosts.registry().get(&id) {
        return Ok(conn);
    }
    match st.hosts.get(&id).await? {
        None => Err(host_not_found(raw)),
        Some(_) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "host {id} is offline: its daemon is not connected to this server; start it and retry"
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct LaunchBody {
    session_id: String,
    workspace: String,
}

/// `POST /v1/hosts/{host_id}/runners {session_id, workspace}` → `{"runner_id","status":"launching"}`.
pub async fn launch_runner(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<LaunchBody>,
) -> Result<Response, ApiError> {
    live_host(&st, &raw).await?;
    check_path("workspace", &body.workspace)?;
    let sid = session_id(&body.session_id)?;
    let runner_id = hosts::launch_for_session(&st, &raw, &sid, &body.workspace).await?;
    Ok(json(
        StatusCode::OK,
        &json_value!({ "runner_id": runner_id, "status": "launching" }),
    ))
}

fn check_path(name: &str, path: &str) -> Result<(), ApiError> {
    if path.trim().is_empty() {
        return Err(ApiError::invalid(format!(
            "`{name}` is required: an absolute path on the host (or one starting with ~)"
        )));
    }
    if path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return Err(ApiError::invalid(format!(
            "`{name}` must be at most {MAX_PATH_BYTES} bytes with no NUL"
        )));
    }
    Ok(())
}

/// An error of the filesystem routes: an API error, or 504 when the host did not answer in time.
#[derive(Debug)]
pub enum FsError {
    Api(ApiError),
    Timeout(String),
}

impl From<ApiError> for FsError {
    fn from(e: ApiError) -> Self {
        FsError::Api(e)
    }
}

impl From<HostRequestError> for FsError {
    fn from(e: HostRequestError) -> Self {
        match e {
            HostRequestError::Timeout { .. } => FsError::Timeout(e.to_string()),
            e => FsError::Api(request_error(e, ErrorCode::InternalError)),
        }
    }
}

impl IntoResponse for FsError {
    fn into_response(self) -> Response {
        match self {
            FsError::Api(e) => e.into_response(),
            FsError::Timeout(message) => json(
                StatusCode::GATEWAY_TIMEOUT,
                &json_value!({ "error": { "code": "timeout", "message": message } }),
            ),
        }
    }
}

fn host_failed(what: &str, path: &str, error: Option<&str>) -> FsError {
    FsError::Api(ApiError::invalid(format!(
        "the host could not {what} {path}: {}",
        error.unwrap_or("no reason given")
    )))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    path: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

/// `GET /v1/hosts/{host_id}/filesystem?path=&limit=&after=` → `host.list_dir` (limit clamped to 1..=1000,
/// 5 s timeout) → `{"path","entries":[{name,path,type,bytes,modified_at}],"has_more"}`.
pub async fn list_dir(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    Q(q): Q<ListQuery>,
) -> Result<Response, FsError> {
    let path = q.path.unwrap_or_else(|| "~".to_owned());
    check_path("path", &path)?;
    if let Some(after) = &q.after {
        check_path("after", after)?;
    }
    let host = live_host(&st, &raw).await?;
    let limit = q
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    let result = host.list_dir(&path, limit, q.after.as_deref()).await?;
    if result.status != "ok" {
        return Err(host_failed("list", &path, result.error.as_deref()));
    }
    Ok(json(
        StatusCode::OK,
        &json_value!({ "path": path, "entries": result.entries, "has_more": result.has_more }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PathQuery {
    path: Option<String>,
}

/// `GET /v1/hosts/{host_id}/filesystem/stat?path=` → `host.stat` →
/// `{"path","exists","type","canonical_path"}`.
pub async fn stat(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    Q(q): Q<PathQuery>,
) -> Result<Response, FsError> {
    let path = q.path.unwrap_or_default();
    check_path("path", &path)?;
    let host = live_host(&st, &raw).await?;
    let result = host.stat(&path).await?;
    if result.status != "ok" {
        return Err(host_failed("inspect", &path, result.error.as_deref()));
    }
    Ok(json(
        StatusCode::OK,
        &json_value!({
            "path": path,
            "exists": result.exists,
            "type": result.file_type,
            "canonical_path": result.canonical_path,
        }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct DirBody {
    path: String,
}

/// `POST /v1/hosts/{host_id}/directories {path}` → `host.create_dir` → 201 `{"path"}`.
pub async fn create_dir(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<DirBody>,
) -> Result<Response, FsError> {
    check_path("path", &body.path)?;
    let host = live_host(&st, &raw).await?;
    let result = host.create_dir(&body.path).await?;
    if result.status != "ok" {
        return Err(host_failed("create", &body.path, result.error.as_deref()));
    }
    let path = result.path.unwrap_or(body.path);
    Ok(json(StatusCode::CREATED, &json_value!({ "path": path })))
}
