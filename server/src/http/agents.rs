//! Agents over HTTP: the multipart `POST /v1/sessions` body (an uploaded bundle, read under caps and checked by
//! `proto::agent::check_upload` before anything is stored), `GET /v1/agents` (built-ins, then uploaded
//! agents), `GET /v1/agents/{id}`, and `GET /v1/sessions/{id}/agent/contents` (the bundle, to the session's
//! runner only).

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use omnigent_proto::agent::bundle::{BundleError, Limits};
use omnigent_proto::agent::{UploadError, check_upload};
use omnigent_proto::api::{
    Agent, ErrorCode, ListEnvelope, MAX_LIST_LIMIT, Order, PageQuery, SessionCreateRequest,
};
use omnigent_proto::headers;
use omnigent_proto::ids::{canonical_id, new_id, runner_id_for_token};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, Q, content_length, json, session_id};
use crate::agents;
use crate::clock::now_ms;
use crate::store::{AgentRow, NewAgent};

/// The whole multipart body of an upload: the bundle (at most [`Limits::max_bundle_bytes`]), the metadata (at
/// most the JSON body cap) and the multipart framing. Checked on `Content-Length` before reading, then while
/// reading.
pub const MAX_UPLOAD_BYTES: u64 = 16 * 1024 * 1024;

/// Most uploaded agents `GET /v1/agents` pages over.
const MAX_LISTED_UPLOADS: u32 = 10_000;

/// Longest agent name kept (it is sent back as the `x-agent-name` header).
const MAX_NAME_BYTES: usize = 256;

/// What a multipart `POST /v1/sessions` carried, checked: the session fields and the agent to store.
pub struct Upload {
    pub metadata: SessionCreateRequest,
    pub agent: NewAgent,
}

/// Whether the request body is `multipart/form-data`.
pub fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("multipart/form-data"))
}

fn too_large(what: &str, limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("{what} is larger than {limit} bytes; upload a smaller agent bundle"),
    )
}

/// Read and check a multipart upload: parts `metadata` (JSON `SessionCreateRequest` fields, optional) and
/// `bundle` (the `.tar.gz`). Nothing is stored here; every refusal names the part or the field.
pub async fn read_upload(st: &AppState, req: Request) -> Result<Upload, ApiError> {
    let limits = Limits::default();
    if content_length(req.headers()).is_some_and(|n| n > MAX_UPLOAD_BYTES) {
        return Err(too_large("the multipart body", MAX_UPLOAD_BYTES));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|e| {
        ApiError::invalid(format!(
            "Content-Type multipart/form-data needs a boundary parameter: {e}"
        ))
    })?;
    let metadata_limit = st.max_body_bytes as u64;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(MAX_UPLOAD_BYTES)
            .per_field(metadata_limit)
            .for_field("bundle", limits.max_bundle_bytes)
            .for_field("metadata", metadata_limit),
    );
    let mut form = multer::Multipart::with_constraints(
        req.into_body().into_data_stream(),
        boundary,
        constraints,
    );
    let mut metadata: Option<Vec<u8>> = None;
    let mut bundle: Option<Vec<u8>> = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let slot = match field.name() {
            Some("metadata") => &mut metadata,
            Some("bundle") => &mut bundle,
            // Other parts are read (within the caps) and ignored, as unknown fields are.
            _ => {
                field.bytes().await.map_err(multipart_error)?;
                continue;
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        if slot.is_some() {
            return Err(ApiError::invalid(format!(
                "part `{name}` appears twice; send one `metadata` and one `bundle` part"
            )));
        }
        *slot = Some(field.bytes().await.map_err(multipart_error)?.to_vec());
    }
    let bundle = bundle.ok_or_else(|| {
        ApiError::invalid(
            "part `bundle` is required: the agent as a .tar.gz holding config.yaml (`omnigent run PATH` packs it)",
        )
    })?;
    let metadata = match metadata {
        Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => parse_metadata(&bytes)?,
        _ => SessionCreateRequest::default(),
    };
    let (_, spec) = check_upload(&bundle, &limits).map_err(upload_error)?;
    let harness = spec
        .harness_name()
        .map(|(_, name)| name.to_owned())
        .ok_or_else(|| ApiError::invalid("agent spec field executor.harness: no harness"))?;
    let name = spec.name.clone().unwrap_or_else(|| "agent".to_owned());
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name.chars().any(char::is_control)
        || HeaderValue::from_str(&name).is_err()
    {
        return Err(ApiError::invalid(format!(
            "agent spec field name: must be 1 to {MAX_NAME_BYTES} printable ASCII characters"
        )));
    }
    let description = spec
        .extra
        .get("description")
        .and_then(|d| d.as_str())
        .unwrap_or_default()
        .to_owned();
    let spec_json = serde_json::to_value(&spec).map_err(|e| {
        ApiError::new(
            ErrorCode::InternalError,
            format!("cannot encode the agent spec: {e}"),
        )
    })?;
    let sha256 = hex::encode(Sha256::digest(&bundle));
    Ok(Upload {
        metadata,
        agent: NewAgent {
            row: AgentRow {
                id: new_id(),
                name,
                version: "1".to_owned(),
                harness,
                description,
                spec: spec_json,
                bundle_sha256: sha256,
                session_scoped: true,
                created_at_ms: now_ms(),
            },
            bundle,
        },
    })
}

fn parse_metadata(bytes: &[u8]) -> Result<SessionCreateRequest, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::invalid(format!("part `metadata` is not a JSON object: {inner}"))
        } else {
            ApiError::invalid(format!("part `metadata` field `{path}` is wrong: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("part `metadata` is not a JSON object: {e}")))?;
    Ok(value)
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { limit } => too_large("the multipart body", limit),
        multer::Error::FieldSizeExceeded { limit, field_name } => too_large(
            &format!("part `{}`", field_name.as_deref().unwrap_or("?")),
            limit,
        ),
        e => ApiError::invalid(format!("the multipart body is malformed: {e}")),
    }
}

/// A refused bundle: 413 for a cap (size, unpacked size, expansion, entries, `config.yaml` size), 400 for the
/// rest; the message names the entry (`bundle entry "…"`) or the spec field (`agent spec field …`).
fn upload_error(e: UploadError) -> ApiError {
    let capped = matches!(
        e,
        UploadError::Bundle(
            BundleError::TooLarge { .. }
                | BundleError::UnpackedTooLarge { .. }
                | BundleError::ExpansionRatio { .. }
                | BundleError::TooManyEntries { .. }
                | BundleError::SpecTooLarge { .. }
        )
    );
    let message = match &e {
        UploadError::Bundle(b) => format!("part `bundle` refused: {b}"),
        UploadError::Spec(s) => format!("part `bundle` refused: config.yaml: {s}"),
    };
    if capped {
        ApiError::new(ErrorCode::PayloadTooLarge, message)
    } else {
        ApiError::invalid(message)
    }
}

/// An uploaded agent as `GET /v1/agents` lists it.
pub(super) fn wire_agent(row: &AgentRow) -> Agent {
    Agent {
        id: row.id.clone(),
        object: "agent".to_owned(),
        name: row.name.clone(),
        description: row.description.clone(),
        created_at: row.created_at_ms / 1000,
        harness: row.harness.clone(),
        version: Some(row.version.clone()),
        session_scoped: Some(row.session_scoped),
    }
}

/// `GET /v1/agents`: the built-in agents, then the uploaded ones (oldest first), paged by id.
pub async fn list(State(st): State<AppState>, Q(q): Q<PageQuery>) -> Result<Response, ApiError> {
    let limit = match q.limit {
        None => 20,
        Some(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "limit={n} is out of range; use 1 to {MAX_LIST_LIMIT}"
            )));
        }
    };
    let uploaded = st.store.list_agents(MAX_LISTED_UPLOADS).await?;
    let mut all: Vec<Agent> = agents::all().to_vec();
    all.extend(uploaded.iter().map(wire_agent));
    if q.order == Some(Order::Desc) {
        all.reverse();
    }
    let find = |name: &str, id: &str| {
        all.iter()
            .position(|a| a.id == id || a.name == id)
            .ok_or_else(|| ApiError::invalid(format!("{name}=`{id}` names no agent of this list")))
    };
    let start = match q.after.as_deref() {
        Some(id) => find("after", id)? + 1,
        None => 0,
    };
    let end = match q.before.as_deref() {
        Some(id) => find("before", id)?,
        None => all.len(),
    };
    let window: Vec<Agent> = all.get(start..end.max(start)).unwrap_or_default().to_vec();
    let has_more = window.len() > limit;
    let page: Vec<Agent> = if q.before.is_some() && q.after.is_none() {
        window[window.len().saturating_sub(limit)..].to_vec()
    } else {
        window.into_iter().take(limit).collect()
    };
    Ok(json(
        StatusCode::OK,
        &ListEnvelope::new(page, has_more, |a| a.id.as_str()),
    ))
}

/// `GET /v1/agents/{id}`: a built-in (by id or name) or an uploaded agent.
pub async fn get_one(
    State(st): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(agent) = agents::find(&raw) {
        return Ok(json(StatusCode::OK, agent));
    }
    let not_found = || {
        ApiError::new(
            ErrorCode::NotFound,
            format!("agent `{raw}` not found; GET /v1/agents lists the agents"),
        )
    };
    let id = canonical_id(&raw).ok_or_else(not_found)?;
    let row = st.store.get_agent(&id).await?.ok_or_else(not_found)?;
    Ok(json(StatusCode::OK, &wire_agent(&row)))
}

/// Byte strings equal, in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /v1/sessions/{id}/agent/contents`: the session's agent bundle (`application/gzip`, with the `x-agent-*`
/// headers), only to the caller presenting the binding token of the session's runner
/// (`X-Omnigent-Runner-Tunnel-Token`; the runner id is derived from it, `proto::ids::runner_id_for_token`).
/// 401 without a token, 403 with another one, 404 for a session that runs a built-in agent (no bundle).
pub async fn contents(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = session_id(&raw)?;
    let row = st
        .store
        .get_session(&id)
        .await?
        .ok_or_else(ApiError::session_not_found)?;
    let token = request_headers
        .get(headers::RUNNER_TUNNEL_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the agent bundle is served only to the session's runner: send its binding token in \
                 X-Omnigent-Runner-Tunnel-Token",
            )
        })?;
    let presented = runner_id_for_token(token);
    let bound = row.runner_id.as_deref().unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), bound.as_bytes()) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            if row.runner_id.is_none() {
                format!(
                    "session {id} has no runner bound; only its runner may fetch the agent bundle"
                )
            } else {
                format!(
                    "the X-Omnigent-Runner-Tunnel-Token given is not the binding token of session {id}'s \
                     runner; only that runner may fetch the agent bundle"
                )
            },
        ));
    }
    if let Some(builtin) = agents::find(&row.agent_id) {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "session {id} runs the built-in agent `{}`, which has no bundle; run it with the built-in \
                 harness `{}`",
                builtin.name, builtin.harness
            ),
        ));
    }
    let missing = || {
        ApiError::new(
            ErrorCode::NotFound,
            format!(
                "session {id}'s agent `{}` has no stored bundle on this server",
                row.agent_id
            ),
        )
    };
    let agent = st
        .store
        .get_agent(&row.agent_id)
        .await?
        .ok_or_else(missing)?;
    let bytes = st
        .store
        .agent_bundle(&agent.bundle_sha256)
        .await?
        .ok_or_else(missing)?;
    let mut response = (StatusCode::OK, Body::from(bytes)).into_response();
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    out.insert(headers::AGENT_ID, value(&agent.id));
    out.insert(headers::AGENT_VERSION, value(&agent.version));
    out.insert(headers::AGENT_NAME, value(&agent.name));
    out.insert(
        headers::AGENT_SESSION_SCOPED,
        HeaderValue::from_static(if agent.session_scoped {
            "true"
        } else {
            "false"
        }),
    );
    if request_headers.contains_key(headers::MCP_SELECTION) {
        // Every MCP server of the spec (0.19.1 answers `{}` too).
        out.insert(headers::MCP_SELECTION, HeaderValue::from_static("{}"));
    }
    Ok(response)
}
