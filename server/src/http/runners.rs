//! Runners (reference §1.3, §3.1): the tunnel route, the live registry, and the token call 0.19.1 answers
//! with 400 on a server without auth.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use omnigent_proto::api::{RunnerInfo, RunnerList};
use omnigent_proto::ids::check_path_id;
use omnigent_tunnel::{TunnelUpgrade, UpgradeRejection};
use serde_json::{Value, json};

use super::{ApiError, AppState, json};

/// `GET /v1/runners/{runner_id}/tunnel`: the runner tunnel. A bad id is refused with 400 before the upgrade;
/// the Origin, token and replacement rules ([`omnigent_tunnel::auth`]) close the socket before any frame; then
/// the handshake and close codes of §3.1.
pub async fn tunnel(
    State(st): State<AppState>,
    Path(runner_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<TunnelUpgrade, UpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => {
            omnigent_tunnel::upgrade(ws, peer, runner_id, &headers, st.sessions.runners().clone())
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// The runner id of a path, or 400 saying what an id may look like.
fn runner_id(raw: String) -> Result<String, ApiError> {
    check_path_id(&raw)
        .map(|()| raw)
        .map_err(|e| ApiError::invalid(format!("invalid runner id: {e}")))
}

/// `GET /v1/runners`: the online runners.
pub async fn list(State(st): State<AppState>) -> Response {
    let data = st
        .sessions
        .runners()
        .list()
        .into_iter()
        .map(|r| RunnerInfo {
            runner_id: r.runner_id,
            online: true,
            harnesses: r.harnesses,
        })
        .collect();
    json(StatusCode::OK, &RunnerList { data })
}

/// `GET /v1/runners/{id}/status`.
pub async fn status(
    State(st): State<AppState>,
    Path(runner_id): Path<String>,
) -> Result<Response, ApiError> {
    let runner_id = self::runner_id(runner_id)?;
    let online = st.sessions.runners().is_online(&runner_id);
    let mut body = json!({"runner_id": runner_id, "online": online});
    if let Some(error) = st.hosts.runner_exit_error(&runner_id) {
        body["error"] = Value::from(error);
    }
    Ok(json(StatusCode::OK, &body))
}

/// `POST /v1/runners/{id}/token`: minting owner tokens needs auth, which this server does not have; 0.19.1
/// answers a local runner 400 and the runner carries on.
pub async fn token(Path(runner_id): Path<String>) -> ApiError {
    let runner_id = match self::runner_id(runner_id) {
        Ok(id) => id,
        Err(e) => return e,
    };
    ApiError::invalid(format!(
        "runner `{runner_id}` cannot get a token: this server has no authentication, so none is needed; \
         connect to /v1/runners/{runner_id}/tunnel directly"
    ))
}
