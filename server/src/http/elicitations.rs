//! Approvals (issue 15 item 6; reference §1.2): `POST /v1/sessions/{id}/elicitations/{eid}/resolve` answers a
//! question the session's agent asked (the `approval` event of `POST …/events` takes the same path), and
//! `GET /v1/sessions/{id}/elicitations/{eid}` tells whether it is still pending. Both need a driver.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use omnigent_proto::api::EventAccepted;
use omnigent_proto::elicitation::{Answer, ElicitationState, Resolution};

use super::{ApiError, AppState, JsonBody, json, session_id};

/// The answer to a question: 202 `{"queued": false}` for the answer that won, 409 `already_resolved` for a
/// later one, 404 for an id the session is not waiting on.
pub async fn resolve(
    State(st): State<AppState>,
    Path((raw, elicitation_id)): Path<(String, String)>,
    JsonBody(answer): JsonBody<Answer>,
) -> Result<Response, ApiError> {
    let id = session_id(&raw)?;
    answer_question(
        &st,
        &id,
        Resolution {
            elicitation_id,
            answer,
        },
    )
    .await
}

/// One answer, from either route.
pub(super) async fn answer_question(
    st: &AppState,
    session_id: &str,
    resolution: Resolution,
) -> Result<Response, ApiError> {
    st.sessions.resolve(session_id, resolution).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &EventAccepted {
            queued: false,
            item_id: None,
        },
    ))
}

/// The question while it is pending, else `{"status": "resolved"}` (as 0.19.1 answers for any id).
pub async fn get_one(
    State(st): State<AppState>,
    Path((raw, elicitation_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = session_id(&raw)?;
    st.store
        .get_session(&id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let state = match st.sessions.pending().get(&id, &elicitation_id) {
        Some(request) => ElicitationState::pending(&request),
        None => ElicitationState::Resolved,
    };
    Ok(json(StatusCode::OK, &state))
}
