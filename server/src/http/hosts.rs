//! Host routes (reference omnigent-server-v1.md §1.3, §3.7): the host tunnel, the host list, launching a
//! runner on a host, and the workspace picker's filesystem calls proxied through the tunnel.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use omnigent_proto::api::{ErrorCode, HostList};
use omnigent_proto::auth::Role;
use omnigent_proto::host_frames::LaunchErrorCode;
use omnigent_proto::ids::canonical_id;
use omnigent_tunnel::host::{HostConnection, HostRequestError};
use omnigent_tunnel::{TunnelUpgrade, UpgradeRejection};
use serde::Deserialize;
use serde_json::json as json_value;

use super::{ApiError, AppState, JsonBody, Q, json, session_id};
use crate::hosts::{self, HostListStopped, LaunchError};

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
    axum::Extension(caller): axum::Extension<super::auth::Caller>,
    ws: Result<TunnelUpgrade, UpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => {
            if let Some(id) = omnigent_proto::ids::canonical_id(&host_id) {
                let principal = caller.device.as_ref().map(|d| d.id.clone());
                let taken_by_other = {
                    let map = st
                        .host_principals
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    map.get(&id).is_some_and(|(generation, owner)| {
                        *owner != principal
                            && st
                                .hosts
                                .registry()
                                .get(&id)
                                .is_some_and(|t| t.generation() == *generation)
                    })
                };
                // The owner may always take a host id over; a device only one that no one else holds live.
                if taken_by_other && !caller.local_owner && caller.role != Some(Role::Owner) {
                    return ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "host `{}` is connected from another device; a host id belongs to the machine that                              registered it",
                            omnigent_proto::ids::loggable_id(&id)
                        ),
                    )
                    .into_response();
                }
                tokio::spawn(watch_host_tunnel(
                    st.clone(),
                    id,
                    principal,
                    caller.device.map(|d| d.revoked),
                ));
            }
            omnigent_tunnel::host::upgrade(ws, host_id, &headers, st.hosts.registry().clone())
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// One host tunnel request's watcher: it learns the tunnel's generation from its `Connected`, records who
/// opened it ([`AppState::host_principals`]), closes it when its device is revoked, and ends with it (or if
/// it never connects).
async fn watch_host_tunnel(
    st: AppState,
    host_id: String,
    principal: Option<String>,
    revoked: Option<tokio_util::sync::CancellationToken>,
) {
    use omnigent_tunnel::host::HostEvent;
    let registry = st.hosts.registry().clone();
    let stop = st.stop.clone();
    let revoked = revoked.unwrap_or_default();
    let mut events = registry.subscribe();
    let connected = async {
        loop {
            match events.recv().await {
                Ok(HostEvent::Connected {
                    host_id: id,
                    generation,
                    ..
                }) if id == host_id => return Some(generation),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    };
    let generation = tokio::select! {
        () = stop.cancelled() => return,
        g = tokio::time::timeout(std::time::Duration::from_secs(60), connected) => match g {
            Ok(Some(g)) => g,
            _ => return,
        },
    };
    st.host_principals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(host_id.clone(), (generation, principal));
    let ended = async {
        loop {
            match events.recv().await {
                Ok(HostEvent::Disconnected {
                    host_id: id,
                    generation: g,
                }) if id == host_id && g == generation => return,
                Ok(HostEvent::Connected { host_id: id, .. }) if id == host_id => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        () = ended => {}
        () = revoked.cancelled() => {
            if let Some(tunnel) = registry.get(&host_id).filter(|t| t.generation() == generation) {
                tunnel.close(
                    omnigent_proto::host_frames::close::UNAUTHENTICATED,
                    "device revoked",
                );
            }
        }
    }
    let mut map = st
        .host_principals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if map.get(&host_id).is_some_and(|(g, _)| *g == generation) {
        map.remove(&host_id);
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
    let runner_id =
        hosts::launch_for_session(&st.hosts, &st.store, &raw, &sid, &body.workspace).await?;
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

impl From<HostListStopped> for ApiError {
    fn from(e: HostListStopped) -> Self {
        ApiError::new(ErrorCode::InternalError, e.to_string())
    }
}

impl From<LaunchError> for ApiError {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::SessionNotFound => ApiError::session_not_found(),
            LaunchError::Request(e) => request_error(&e, ErrorCode::RunnerUnavailable),
            LaunchError::Store(e) => e.into(),
            e @ (LaunchError::BadHostId { .. } | LaunchError::AlreadyBound { .. }) => {
                ApiError::invalid(e.to_string())
            }
            e @ LaunchError::HostOffline { .. } => {
                ApiError::new(ErrorCode::Conflict, e.to_string())
            }
            e @ LaunchError::Workspace(_) => {
                ApiError::new(ErrorCode::WorkspaceMissing, e.to_string())
            }
            e @ LaunchError::Refused { code, .. } => {
                let code = match code {
                    Some(LaunchErrorCode::HarnessNotConfigured) => ErrorCode::HarnessNotConfigured,
                    Some(LaunchErrorCode::WorkspaceMissing) => ErrorCode::WorkspaceMissing,
                    None => ErrorCode::RunnerUnavailable,
                };
                ApiError::new(code, e.to_string())
            }
            e @ LaunchError::RunnerDidNotConnect { .. } => {
                ApiError::new(ErrorCode::RunnerUnavailable, e.to_string())
            }
        }
    }
}

/// A failed request to a host as an API error; `on_timeout` is the code of a timeout (the filesystem routes
/// answer 504 themselves before calling this).
fn request_error(e: &HostRequestError, on_timeout: ErrorCode) -> ApiError {
    let code = match e {
        HostRequestError::HostOffline(_) | HostRequestError::Closed { .. } => ErrorCode::Conflict,
        HostRequestError::Timeout { .. } => on_timeout,
        HostRequestError::NotARequest(_) | HostRequestError::UnexpectedReply { .. } => {
            ErrorCode::InternalError
        }
    };
    ApiError::new(code, e.to_string())
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
            e => FsError::Api(request_error(&e, ErrorCode::InternalError)),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use omnigent_proto::host_frames::LaunchRunnerResult;
    use serde_json::Map;

    use super::*;
    use crate::hosts::{WorkspaceError, launch_outcome};
    use crate::store::StoreError;

    /// Status and code on the wire of an error.
    fn wire(e: impl Into<ApiError>) -> (u16, ErrorCode) {
        let e: ApiError = e.into();
        (e.code.status(), e.code)
    }

    #[test]
    fn launch_failures_map_to_their_codes() {
        let result = |status: &str, code: Option<&str>| LaunchRunnerResult {
            request_id: "1".into(),
            status: status.into(),
            runner_id: None,
            error: Some("nope".into()),
            error_code: code.map(str::to_owned),
            extra: Map::new(),
        };
        assert!(launch_outcome(&result("launched", None), "r", "h").is_ok());
        let status = |r: Result<(), LaunchError>| {
            r.err()
                .map(|e| ApiError::from(e).into_response().status().as_u16())
        };
        assert_eq!(
            status(launch_outcome(
                &result("failed", Some("harness_not_configured")),
                "r",
                "h"
            )),
            Some(412)
        );
        assert_eq!(
            status(launch_outcome(
                &result("failed", Some("workspace_missing")),
                "r",
                "h"
            )),
            Some(410)
        );
        assert_eq!(
            status(launch_outcome(&result("failed", None), "r", "h")),
            Some(503)
        );
        // A code this version does not know is a plain 503, and the message names host, runner and reason.
        let Err(e) = launch_outcome(&result("failed", Some("quota_exceeded")), "r", "h") else {
            panic!("an unknown error code is still a failed launch");
        };
        let e = ApiError::from(e);
        assert_eq!(e.code, ErrorCode::RunnerUnavailable);
        assert_eq!(e.message, "host h could not launch runner r: nope");
    }

    #[test]
    fn each_host_domain_error_has_its_status_and_code() {
        let workspace = |w: WorkspaceError| LaunchError::Workspace(w);
        let timeout = HostRequestError::Timeout {
            host_id: "h".into(),
            kind: "host.stat",
            after: Duration::from_secs(5),
        };
        let cases: Vec<(LaunchError, u16, ErrorCode)> = vec![
            (
                LaunchError::BadHostId { raw: "x".into() },
                400,
                ErrorCode::InvalidInput,
            ),
            (
                LaunchError::HostOffline {
                    host_id: "h".into(),
                },
                409,
                ErrorCode::Conflict,
            ),
            (LaunchError::SessionNotFound, 404, ErrorCode::NotFound),
            (
                LaunchError::AlreadyBound {
                    session_id: "s".into(),
                    runner_id: "r".into(),
                },
                400,
                ErrorCode::InvalidInput,
            ),
            (
                workspace(WorkspaceError::Uninspectable {
                    name: "n".into(),
                    workspace: "/w".into(),
                    why: "denied".into(),
                }),
                410,
                ErrorCode::WorkspaceMissing,
            ),
            (
                workspace(WorkspaceError::Missing {
                    name: "n".into(),
                    workspace: "/w".into(),
                    host_id: "h".into(),
                }),
                410,
                ErrorCode::WorkspaceMissing,
            ),
            (
                workspace(WorkspaceError::NotADirectory {
                    name: "n".into(),
                    workspace: "/w".into(),
                    file_type: "file".into(),
                }),
                410,
                ErrorCode::WorkspaceMissing,
            ),
            (
                LaunchError::RunnerDidNotConnect {
                    runner_id: "r".into(),
                    session_id: "s".into(),
                    wait: Duration::from_secs(30),
                    exited: Some("exit 1".into()),
                },
                503,
                ErrorCode::RunnerUnavailable,
            ),
            (
                LaunchError::Request(HostRequestError::HostOffline("h".into())),
                409,
                ErrorCode::Conflict,
            ),
            (
                LaunchError::Request(HostRequestError::Closed {
                    host_id: "h".into(),
                    kind: "host.stat",
                }),
                409,
                ErrorCode::Conflict,
            ),
            // A launch's timeout is the runner's unavailability; the filesystem routes answer 504 instead.
            (
                LaunchError::Request(timeout.clone()),
                503,
                ErrorCode::RunnerUnavailable,
            ),
            (
                LaunchError::Request(HostRequestError::NotARequest("host.hello")),
                500,
                ErrorCode::InternalError,
            ),
            (
                LaunchError::Store(StoreError::CursorNotFound("c".into())),
                400,
                ErrorCode::InvalidInput,
            ),
        ];
        for (e, status, code) in cases {
            let what = format!("{e:?}");
            assert_eq!(wire(e), (status, code), "{what}");
        }
        assert_eq!(
            wire(HostListStopped),
            (500, ErrorCode::InternalError),
            "host list stopped"
        );
        // The message on the wire is the domain error's own text.
        let e = ApiError::from(LaunchError::RunnerDidNotConnect {
            runner_id: "r".into(),
            session_id: "s".into(),
            wait: Duration::from_secs(30),
            exited: Some("exit 1".into()),
        });
        assert_eq!(
            e.message,
            "the host relaunched runner r of session s, but it did not connect within 30s (it exited: exit 1); \
             check the host daemon's log (`omnigent status`) and retry"
        );
        assert_eq!(
            ApiError::from(LaunchError::SessionNotFound).message,
            "Session not found"
        );
        // The filesystem routes keep their own 504 for a timeout.
        let fs = FsError::from(timeout).into_response();
        assert_eq!(fs.status().as_u16(), 504);
    }
}
