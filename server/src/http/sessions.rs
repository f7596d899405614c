//! Sessions CRUD, list, items and fork (reference §1.2).

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use omnigent_proto::api::{
    Agent, BundleSessionCreated, DEFAULT_ITEMS_LIMIT, DEFAULT_SESSIONS_LIMIT, ErrorCode,
    ForkRequest, ListEnvelope, MAX_LIST_LIMIT, Order, PageQuery, SessionCreateRequest,
    SessionDeleted, SessionKindFilter, SessionListItem, SessionListQuery, SessionPatchRequest,
    SessionResponse, SessionStatus, SnapshotItem, SortBy, WireItem,
};
use omnigent_proto::ids::{canonical_id, new_id};
use serde::Deserialize;

use super::events::item_from_input;
use super::{ApiError, AppState, JsonBody, Q, json, session_id};
use crate::actor::wire_item;
use crate::agents;
use crate::clock::now_ms;
use crate::store::{
    ItemListParams, ItemRow, NewAgent, NewSession, SessionChanges, SessionListParams, SessionRow,
    SessionSort, UploadedAgentRef, fts_query,
};

/// Most items embedded in a snapshot (`GET /v1/sessions/{id}`); page with `…/items` beyond that.
const SNAPSHOT_ITEMS: u32 = 10_000;

/// `POST /v1/sessions`: JSON (`SessionCreateRequest`, a built-in agent) answers the session; multipart
/// (`metadata` + `bundle`, an uploaded agent; `super::agents`) answers `{"session_id"}`.
pub async fn create(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    if super::agents::is_multipart(req.headers()) {
        let upload = super::agents::read_upload(&st, req).await?;
        let (row, _) =
            create_session(&st, &upload.metadata, SessionAgent::Uploaded(&upload.agent)).await?;
        return Ok(json(
            StatusCode::CREATED,
            &BundleSessionCreated { session_id: row.id },
        ));
    }
    let JsonBody(req) = JsonBody::<SessionCreateRequest>::from_request(req, &st).await?;
    let agent_ref = req.agent_id.as_deref().ok_or_else(|| {
        ApiError::invalid(format!(
            "agent_id is required; GET /v1/agents lists the agents ({})",
            agents::names()
        ))
    })?;
    let agent = agents::find(agent_ref).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!(
                "agent `{agent_ref}` not found; GET /v1/agents lists the agents ({})",
                agents::names()
            ),
        )
    })?;
    let (row, rows) = create_session(&st, &req, SessionAgent::Builtin(agent)).await?;
    Ok(json(StatusCode::CREATED, &live_response(&st, &row, &rows)))
}

/// Whose agent a new session runs.
enum SessionAgent<'a> {
    Builtin(&'a Agent),
    /// Stored with the session, in its transaction.
    Uploaded(&'a NewAgent),
}

/// Create the session `req` asks for (launching its runner when it is host-bound); answers its row and items.
/// Nothing is stored when any step fails.
async fn create_session(
    st: &AppState,
    req: &SessionCreateRequest,
    agent: SessionAgent<'_>,
) -> Result<(SessionRow, Vec<ItemRow>), ApiError> {
    let (agent_id, uploaded_agent, harness) = match agent {
        SessionAgent::Builtin(a) => (a.id.clone(), None, a.harness.clone()),
        SessionAgent::Uploaded(a) => (
            a.row.id.clone(),
            Some(UploadedAgentRef {
                name: a.row.name.clone(),
                harness: a.row.harness.clone(),
                bundle_sha256: a.row.bundle_sha256.clone(),
            }),
            a.row.harness.clone(),
        ),
    };
    if req.host_id.is_some() && req.workspace.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::invalid(
            "workspace is required when host_id is set: name the directory on that host the session works in",
        ));
    }
    if let Some(args) = &req.terminal_launch_args {
        validate_launch_args(args)?;
    }
    let id = new_id();
    let (kind, parent, root) = match &req.parent_session_id {
        Some(raw) => {
            let parent_id = session_id(raw).map_err(|_| parent_not_found(raw))?;
            let parent = st
                .store
                .get_session(&parent_id)
                .await?
                .ok_or_else(|| parent_not_found(raw))?;
            ("sub_agent", Some(parent_id), parent.root_session_id)
        }
        None => ("default", None, id.clone()),
    };
    let now = now_ms();
    let mut items = Vec::with_capacity(req.initial_items.len());
    for (i, input) in req.initial_items.iter().enumerate() {
        let item = item_from_input(&input.kind, &input.data, input.created_by.clone(), now)
            .map_err(|e| ApiError::invalid(format!("initial_items[{i}]: {e}")))?;
        items.push(item);
    }
    // A host-bound session: the host is online and the workspace a directory there (host.stat) first.
    let launch = match (&req.host_id, &req.workspace) {
        (Some(host), Some(workspace)) => {
            Some(crate::hosts::prepare_launch(&st.hosts, host, workspace).await?)
        }
        _ => None,
    };
    let row = SessionRow {
        id: id.clone(),
        agent_id,
        title: req.title.clone(),
        labels: req.labels.clone(),
        status: SessionStatus::Idle.as_str().to_owned(),
        created_at_ms: now,
        updated_at_ms: now,
        archived: false,
        kind: kind.to_owned(),
        parent_session_id: parent,
        root_session_id: root,
        sub_agent_name: req.sub_agent_name.clone(),
        runner_id: launch.as_ref().map(|l| l.runner_id.clone()),
        host_id: req.host_id.as_deref().map(canonical_host),
        workspace: req.workspace.clone(),
        git_branch: req.git.as_ref().map(|g| g.branch_name.clone()),
        model_override: req.model_override.clone().filter(|m| !clears_model(m)),
        reasoning_effort: req.reasoning_effort.clone(),
        cost_control_mode_override: None,
        external_session_id: None,
        terminal_launch_args: req.terminal_launch_args.clone(),
        uploaded_agent,
    };
    let new = NewSession { row: row.clone() };
    match agent {
        SessionAgent::Builtin(_) => st.store.create_session(&new, &items).await?,
        SessionAgent::Uploaded(a) => st.store.create_session_with_agent(a, &new, &items).await?,
    }
    if let Some(launch) = launch {
        crate::hosts::launch_new_session(&st.hosts, &st.store, launch, &id, &harness).await?;
    }
    let rows: Vec<ItemRow> = items
        .into_iter()
        .enumerate()
        .map(|(position, i)| ItemRow {
            id: i.id,
            position: position as i64,
            seq: 0,
            kind: i.kind,
            status: i.status,
            response_id: i.response_id,
            created_at_ms: i.created_at_ms,
            created_by: i.created_by,
            data: i.data,
        })
        .collect();
    Ok((row, rows))
}

fn parent_not_found(raw: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("parent session `{raw}` not found"),
    )
}

fn canonical_host(raw: &str) -> String {
    canonical_id(raw).unwrap_or_else(|| raw.to_owned())
}

fn clears_model(m: &str) -> bool {
    matches!(m, "default" | "off" | "reset" | "")
}

fn validate_launch_args(args: &[String]) -> Result<(), ApiError> {
    if args.len() > 256 {
        return Err(ApiError::invalid(
            "terminal_launch_args: at most 256 arguments",
        ));
    }
    if let Some(bad) = args.iter().position(|a| a.contains('\0') || a.len() > 8192) {
        return Err(ApiError::invalid(format!(
            "terminal_launch_args[{bad}]: an argument may not contain NUL or exceed 8192 bytes"
        )));
    }
    Ok(())
}

pub async fn list(
    State(st): State<AppState>,
    Q(q): Q<SessionListQuery>,
) -> Result<Response, ApiError> {
    let limit = check_limit(q.limit, DEFAULT_SESSIONS_LIMIT)?;
    let params = SessionListParams {
        limit,
        after: q
            .after
            .as_deref()
            .map(|c| cursor_id("after", c))
            .transpose()?,
        before: q
            .before
            .as_deref()
            .map(|c| cursor_id("before", c))
            .transpose()?,
        descending: q.order.unwrap_or(Order::Desc) == Order::Desc,
        sort: match q.sort_by.unwrap_or_default() {
            SortBy::CreatedAt => SessionSort::CreatedAt,
            SortBy::UpdatedAt => SessionSort::UpdatedAt,
        },
        fts_query: q.search_query.as_deref().and_then(fts_query),
        include_archived: q.include_archived.unwrap_or(false),
        kind: match q.kind.unwrap_or_default() {
            SessionKindFilter::Default => Some("default".to_owned()),
            SessionKindFilter::SubAgent => Some("sub_agent".to_owned()),
            SessionKindFilter::Any => None,
        },
        agent_id: q.agent_id.as_deref().map(|a| {
            agents::find(a)
                .map(|a| a.id.clone())
                .unwrap_or_else(|| a.to_owned())
        }),
    };
    let (rows, has_more) = st.store.list_sessions(&params).await?;
    let data = live_list_items(&st, &rows).await?;
    Ok(json(
        StatusCode::OK,
        &ListEnvelope::new(data, has_more, |s| s.id.as_str()),
    ))
}

pub(super) fn check_limit(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(format!(
            "limit={n} is out of range; use 1 to {MAX_LIST_LIMIT}"
        ))),
    }
}

fn cursor_id(name: &str, raw: &str) -> Result<String, ApiError> {
    canonical_id(raw).ok_or_else(|| {
        ApiError::invalid(format!(
            "{name}=`{raw}` is not an id; pass the first_id or last_id of a page you received"
        ))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GetQuery {
    include_items: Option<bool>,
    include_liveness: Option<bool>,
    refresh_state: Option<bool>,
}

pub async fn get_one(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    Q(q): Q<GetQuery>,
) -> Result<Response, ApiError> {
    let _ = (q.include_liveness, q.refresh_state);
    let id = session_id(&raw)?;
    let row = st
        .store
        .get_session(&id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let items = if q.include_items.unwrap_or(true) {
        st.store.all_items(&id, SNAPSHOT_ITEMS).await?
    } else {
        Vec::new()
    };
    Ok(json(StatusCode::OK, &live_response(&st, &row, &items)))
}

pub async fn patch(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    JsonBody(req): JsonBody<SessionPatchRequest>,
) -> Result<Response, ApiError> {
    let id = session_id(&raw)?;
    let current = st
        .store
        .get_session(&id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    if let Some(Some(runner)) = &req.runner_id
        && !st.sessions.runners().is_online(runner)
    {
        // omnigent answers 400 for a runner id that is not in the tunnel registry.
        return Err(ApiError::invalid(format!(
            "runner `{runner}` is not connected to this server; start the runner first (it dials \
             /v1/runners/{runner}/tunnel), then bind it"
        )));
    }
    if let Some(ext) = &req.external_session_id
        && current
            .external_session_id
            .as_ref()
            .is_some_and(|cur| cur != ext)
    {
        return Err(ApiError::invalid(
            "external_session_id is write-once and already set for this session; it cannot be changed",
        ));
    }
    if let Some(Some(args)) = &req.terminal_launch_args {
        validate_launch_args(args)?;
    }
    let labels = req.labels.as_ref().map(|changes| {
        let mut merged: BTreeMap<String, String> = current.labels.clone();
        for (k, v) in changes {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        merged
    });
    let changes = SessionChanges {
        title: req.title.clone().map(Some),
        labels,
        runner_id: req.runner_id.clone(),
        reasoning_effort: req.reasoning_effort.clone(),
        model_override: req
            .model_override
            .clone()
            .map(|m| m.filter(|m| !clears_model(m))),
        cost_control_mode_override: req.cost_control_mode_override.clone(),
        external_session_id: req.external_session_id.clone(),
        terminal_launch_args: req.terminal_launch_args.clone(),
        archived: req.archived,
    };
    let row = st
        .store
        .update_session(&id, &changes, now_ms())
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let items = st.store.all_items(&id, SNAPSHOT_ITEMS).await?;
    Ok(json(StatusCode::OK, &live_response(&st, &row, &items)))
}

/// The snapshot with `runner_online` read from the runner registry.
fn live_response(st: &AppState, row: &SessionRow, items: &[ItemRow]) -> SessionResponse {
    let mut response = session_response(row, items);
    response.runner_online = Some(
        row.runner_id
            .as_deref()
            .is_some_and(|r| st.sessions.runners().is_online(r)),
    );
    response.host_online = row
        .host_id
        .as_deref()
        .map(|h| st.hosts.registry().is_online(h));
    response.pending_elicitations = st.sessions.pending().events(&row.id);
    response
}

pub async fn delete(
    State(st): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = session_id(&raw)?;
    st.sessions.delete(&id).await?;
    Ok(json(StatusCode::OK, &SessionDeleted { id, deleted: true }))
}

pub async fn items(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    Q(q): Q<PageQuery>,
) -> Result<Response, ApiError> {
    let id = session_id(&raw)?;
    let params = ItemListParams {
        limit: check_limit(q.limit, DEFAULT_ITEMS_LIMIT)?,
        after: q
            .after
            .as_deref()
            .map(|c| cursor_id("after", c))
            .transpose()?,
        before: q
            .before
            .as_deref()
            .map(|c| cursor_id("before", c))
            .transpose()?,
        descending: q.order.unwrap_or(Order::Asc) == Order::Desc,
    };
    let (rows, has_more) = st
        .store
        .list_items(&id, &params)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let data: Vec<WireItem> = rows.iter().map(wire_item).collect();
    Ok(json(
        StatusCode::OK,
        &ListEnvelope::new(data, has_more, |i| i.id.as_str()),
    ))
}

pub async fn fork(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    JsonBody(req): JsonBody<ForkRequest>,
) -> Result<Response, ApiError> {
    let source_id = session_id(&raw)?;
    let source = st
        .store
        .get_session(&source_id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    if source.kind == "sub_agent" {
        return Err(ApiError::invalid(
            "a sub-agent session cannot be forked; fork its parent session",
        ));
    }
    let now = now_ms();
    let id = new_id();
    let row = SessionRow {
        id: id.clone(),
        title: req.title.clone().or_else(|| source.title.clone()),
        status: SessionStatus::Idle.as_str().to_owned(),
        created_at_ms: now,
        updated_at_ms: now,
        archived: false,
        kind: "default".to_owned(),
        parent_session_id: None,
        root_session_id: id.clone(),
        runner_id: None,
        external_session_id: None,
        ..source
    };
    let forked = st
        .store
        .fork_session(
            &source_id,
            &NewSession { row: row.clone() },
            req.up_to_response_id.as_deref(),
            &mut new_id,
        )
        .await?;
    if forked.is_none() {
        return Err(ApiError::invalid(format!(
            "up_to_response_id `{}` names no item of this session",
            req.up_to_response_id.unwrap_or_default()
        )));
    }
    let items = st.store.all_items(&id, SNAPSHOT_ITEMS).await?;
    Ok(json(StatusCode::CREATED, &session_response(&row, &items)))
}

/// The list entries of `rows` as the reader sees them now: liveness from the registries, read state from the
/// store (`GET /v1/sessions` and `WS /v1/sessions/updates` both build theirs here).
pub(super) async fn live_list_items(
    st: &AppState,
    rows: &[SessionRow],
) -> Result<Vec<SessionListItem>, ApiError> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let read = st.store.read_states(&ids).await?;
    let runners = st.sessions.runners();
    Ok(rows
        .iter()
        .map(|row| {
            let mut item = list_item(row);
            item.runner_online = row
                .runner_id
                .as_deref()
                .is_some_and(|r| runners.is_online(r));
            item.host_online = row
                .host_id
                .as_deref()
                .map(|h| st.hosts.registry().is_online(h));
            item.pending_elicitations_count = st.sessions.pending().count(&row.id);
            if let Some(r) = read.get(&row.id) {
                item.viewer_last_seen = Some(r.last_seen);
                item.viewer_unread = r.unread;
            }
            item
        })
        .collect())
}

fn status_of(row: &SessionRow) -> SessionStatus {
    SessionStatus::parse(&row.status).unwrap_or_default()
}

fn list_item(row: &SessionRow) -> SessionListItem {
    SessionListItem {
        id: row.id.clone(),
        agent_id: row.agent_id.clone(),
        agent_name: row.agent_name().map(str::to_owned),
        status: status_of(row),
        created_at: row.created_at_ms / 1000,
        updated_at: row.updated_at_ms / 1000,
        title: row.title.clone(),
        labels: row.labels.clone(),
        runner_id: row.runner_id.clone(),
        host_id: row.host_id.clone(),
        // No runner or host can be connected until the tunnel issues land.
        runner_online: false,
        host_online: row.host_id.as_ref().map(|_| false),
        workspace: row.workspace.clone(),
        archived: row.archived,
        pending_elicitations_count: 0,
        parent_session_id: row.parent_session_id.clone(),
        kind: row.kind.clone(),
        sub_agent_name: row.sub_agent_name.clone(),
        viewer_last_seen: None,
        viewer_unread: false,
    }
}

pub fn session_response(row: &SessionRow, items: &[ItemRow]) -> SessionResponse {
    SessionResponse {
        id: row.id.clone(),
        agent_id: row.agent_id.clone(),
        agent_name: row.agent_name().map(str::to_owned),
        status: status_of(row),
        created_at: row.created_at_ms / 1000,
        updated_at: row.updated_at_ms / 1000,
        title: row.title.clone(),
        labels: row.labels.clone(),
        runner_id: row.runner_id.clone(),
        host_id: row.host_id.clone(),
        workspace: row.workspace.clone(),
        runner_online: Some(false),
        host_online: row.host_id.as_ref().map(|_| false),
        reasoning_effort: row.reasoning_effort.clone(),
        items: items.iter().map(snapshot_item).collect(),
        sub_agent_name: row.sub_agent_name.clone(),
        kind: row.kind.clone(),
        parent_session_id: row.parent_session_id.clone(),
        root_conversation_id: row.root_session_id.clone(),
        harness: row.harness().map(str::to_owned),
        model_override: row.model_override.clone(),
        cost_control_mode_override: row.cost_control_mode_override.clone(),
        external_session_id: row.external_session_id.clone(),
        terminal_launch_args: row.terminal_launch_args.clone(),
        pending_elicitations: Vec::new(),
        pending_inputs: Vec::new(),
        git_branch: row.git_branch.clone(),
        archived: row.archived,
        todos: Vec::new(),
        terminal_pending: false,
    }
}

fn snapshot_item(row: &ItemRow) -> SnapshotItem {
    SnapshotItem {
        id: row.id.clone(),
        kind: row.kind.clone(),
        status: row.status.clone(),
        response_id: row.response_id.clone(),
        created_at: row.created_at_ms / 1000,
        data: row.data.clone(),
        created_by: row.created_by.clone(),
    }
}
