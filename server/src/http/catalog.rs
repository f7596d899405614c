//! Catalogs a web client reads at boot or in the new-session dialog (reference §7): `GET /v1/harnesses`,
//! `GET /v1/extensions`, `GET /v1/skills`, `GET /v1/sessions/projects`, `GET|PUT /v1/projects/order`.
//! Shapes as a 0.19.1 server answers (`proto::live`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use omnigent_proto::harness::HARNESSES;
use omnigent_proto::live::{
    ExtensionList, HarnessCatalog, HarnessEntry, MAX_PROJECT_ORDER, PROJECT_LABEL, ProjectOrder,
    ProjectOrderRequest, ProjectSortMode, ProjectSummary, SetupStep, SkillsQuery, SkillsResponse,
};
use serde_json::{Map, Value, json as json_value};

use super::{ApiError, AppState, JsonBody, Q, json, session_id};

/// The preference key of the project order.
const PROJECT_ORDER_KEY: &str = "project_order";

/// `GET /v1/harnesses`: our harnesses with 0.19.1's capability vocabulary, and the setup steps by every
/// spelling a session may name (our names and Python omnigent's aliases).
pub async fn harnesses() -> Response {
    let mut setup_steps = BTreeMap::new();
    let data: Vec<HarnessEntry> = HARNESSES
        .iter()
        .map(|spec| {
            let steps = setup(spec);
            setup_steps.insert(spec.name.to_owned(), steps.clone());
            for alias in spec.aliases {
                setup_steps.insert((*alias).to_owned(), steps.clone());
            }
            HarnessEntry {
                id: spec.name.to_owned(),
                label: label(spec.name),
                capabilities: capabilities(spec.name),
                setup_steps: steps,
            }
        })
        .collect();
    json(StatusCode::OK, &HarnessCatalog { data, setup_steps })
}

fn label(name: &str) -> String {
    match name {
        "openai" => "OpenAI-compatible".to_owned(),
        "anthropic" => "Anthropic".to_owned(),
        "echo" => "Echo".to_owned(),
        "exec" => "Agent CLI (exec)".to_owned(),
        "claude-sdk" => "Claude Code".to_owned(),
        other => other.to_owned(),
    }
}

fn capabilities(name: &str) -> Map<String, Value> {
    let (mode, family, effort) = match name {
        "openai" => ("sdk-in-process", "gpt", "openai"),
        "anthropic" => ("sdk-in-process", "claude", "anthropic"),
        "exec" => ("cli-subprocess", "multi", "none"),
        "claude-sdk" => ("cli-subprocess", "claude", "none"),
        _ => ("sdk-in-process", "none", "none"),
    };
    let auth = if matches!(name, "echo" | "exec" | "claude-sdk") {
        "own-auth"
    } else {
        "omnigent-credential"
    };
    let value = json_value!({
        "integration_mode": mode,
        "elicitation": "none",
        "resume": "cold-only",
        "effort": effort,
        "model_family": family,
        "auth": auth,
        "subagents": false,
        "interrupt": true,
        "streaming": true,
        "steering": null,
        "live_queue": null,
        "images": null,
        "compaction": null,
        "fork_history": "none",
        "shell_tool_name": null,
        "shell_tool_prompt": null,
        "instruction_delivery": "composed-per-turn",
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// What to set on the host for the harness to be configured (`configured_harnesses` of `GET /v1/hosts`).
fn setup(spec: &omnigent_proto::harness::HarnessSpec) -> Vec<SetupStep> {
    let vars: Vec<&str> = spec
        .credentials
        .iter()
        .map(|c| c.var)
        .chain(spec.command.iter().copied())
        .collect();
    // An agent CLI is installed first; its own login also counts as a credential.
    let install = spec.cli.map(|cli| SetupStep {
        kind: "install".to_owned(),
        title: format!("Install `{}` on the host", cli.program),
        detail: format!(
            "Install it with `{}` (or set {} to its path), then run `omnigent host status` on the host.",
            cli.install_hint, cli.path_var
        ),
        action: "setup".to_owned(),
        command: Some(cli.install_hint.to_owned()),
        status_key: None,
    });
    let Some(first) = vars.first() else {
        return install.into_iter().collect();
    };
    let login = spec
        .cli
        .map(|cli| format!(" Or {}.", cli.login_hint))
        .unwrap_or_default();
    install.into_iter().chain([SetupStep {
        kind: "credential".to_owned(),
        title: "Set up on the host".to_owned(),
        detail: format!(
            "Set {} in the environment of `omnigent host` on the host (or in its config.toml), then restart it.{login}",
            vars.join(" or ")
        ),
        action: "setup".to_owned(),
        command: Some(format!("export {first}=…")),
        status_key: None,
    }]).collect()
}

/// `GET /v1/extensions`: none are loaded.
pub async fn extensions() -> Response {
    json(
        StatusCode::OK,
        &ExtensionList {
            object: "list".to_owned(),
            data: Vec::new(),
        },
    )
}

/// `GET /v1/skills?session_id=…` or `?host_id=…&harness=…&path=…`: `{"skills":[]}` (our harnesses have no
/// skills to discover yet). The parameters are checked as 0.19.1 checks them (it answers 422; we 400).
pub async fn skills(
    State(st): State<AppState>,
    Q(q): Q<SkillsQuery>,
) -> Result<Response, ApiError> {
    let blank = |v: &Option<String>| v.as_deref().is_some_and(str::is_empty);
    if [&q.session_id, &q.host_id, &q.harness, &q.path, &q.agent_id]
        .into_iter()
        .any(blank)
    {
        return Err(ApiError::invalid(
            "skills query parameters may not be empty",
        ));
    }
    match &q.session_id {
        Some(raw) => {
            if q.host_id.is_some()
                || q.harness.is_some()
                || q.path.is_some()
                || q.agent_id.is_some()
            {
                return Err(ApiError::invalid(
                    "provide session_id alone, or host_id, harness and path",
                ));
            }
            let id = session_id(raw)?;
            st.store
                .get_session(&id)
                .await?
                .ok_or_else(ApiError::session_not_found)?;
        }
        None => {
            if q.host_id.is_none() || q.harness.is_none() || q.path.is_none() {
                return Err(ApiError::invalid(
                    "provide session_id, or host_id, harness and path",
                ));
            }
        }
    }
    Ok(json(StatusCode::OK, &SkillsResponse::default()))
}

/// `GET /v1/sessions/projects`: the project folders, from the `omni_project` label of the sessions (a bare
/// JSON array). Only label-projects exist here, so they have no id and the order is alphabetical.
pub async fn projects(State(st): State<AppState>) -> Result<Response, ApiError> {
    let names = st.store.label_values(PROJECT_LABEL).await?;
    let data: Vec<ProjectSummary> = names
        .into_iter()
        .map(|name| ProjectSummary {
            id: None,
            name,
            icon: None,
        })
        .collect();
    Ok(json(StatusCode::OK, &data))
}

/// `GET /v1/projects/order`.
pub async fn get_project_order(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &stored_order(&st).await?))
}

/// `PUT /v1/projects/order {"ordered_project_ids": [...] | null}`. `null` selects alphabetical order and
/// keeps the remembered manual order. Ids must name first-class projects, of which this server has none,
/// so only an empty manual order is valid (as on a 0.19.1 server without projects).
pub async fn put_project_order(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<ProjectOrderRequest>,
) -> Result<Response, ApiError> {
    let order = match body.ordered_project_ids {
        None => {
            let mut order = stored_order(&st).await?;
            order.sort_mode = ProjectSortMode::Alphabetical;
            order
        }
        Some(ids) => {
            if ids.len() > MAX_PROJECT_ORDER {
                return Err(ApiError::invalid(format!(
                    "ordered_project_ids: at most {MAX_PROJECT_ORDER} ids"
                )));
            }
            if let Some(bad) = ids.first() {
                return Err(ApiError::invalid(format!(
                    "Invalid project order: `{bad}` is not one of your projects (this server has no \
                     first-class projects; folders come from the `{PROJECT_LABEL}` label)"
                )));
            }
            ProjectOrder {
                sort_mode: ProjectSortMode::Manual,
                ordered_project_ids: Some(ids),
            }
        }
    };
    let text = serde_json::to_string(&order)
        .map_err(|e| ApiError::invalid(format!("cannot encode the order: {e}")))?;
    st.store.set_preference(PROJECT_ORDER_KEY, &text).await?;
    Ok(json(StatusCode::OK, &order))
}

/// The saved order; a missing or unreadable preference reads as the default (alphabetical, none saved).
async fn stored_order(st: &AppState) -> Result<ProjectOrder, ApiError> {
    Ok(st
        .store
        .preference(PROJECT_ORDER_KEY)
        .await?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default())
}
