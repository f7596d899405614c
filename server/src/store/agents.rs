//! Uploaded agents (migration 0005): the agent a multipart `POST /v1/sessions` created, stored with its bundle
//! in the same transaction as its session. The SQLite side is `sqlite/agents.rs`.

use serde_json::Value;

use super::{NewItem, NewSession, Store, StoreError};
use crate::updates::Change;

/// One uploaded agent (without its bundle bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    /// `"1"`: an uploaded agent has one revision (0.19.1 sends `x-agent-version: 1` too).
    pub version: String,
    /// The spec's harness name as written (`openai-agents`, `claude-sdk`, …).
    pub harness: String,
    pub description: String,
    /// The parsed spec, `${VAR}`s as written.
    pub spec: Value,
    /// Hex sha256 of the bundle bytes (the key of `agent_bundles`).
    pub bundle_sha256: String,
    pub session_scoped: bool,
    pub created_at_ms: i64,
}

/// An agent to store with the bundle it came in.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub row: AgentRow,
    pub bundle: Vec<u8>,
}

impl Store {
    /// Store `agent` and its bundle, then the session (whose `agent_id` is the agent's) with `items`, in one
    /// transaction: either all of it is stored or none.
    pub async fn create_session_with_agent(
        &self,
        agent: &NewAgent,
        new: &NewSession,
        items: &[NewItem],
    ) -> Result<(), StoreError> {
        let created = match self {
            Store::Sqlite(s) => s.create_session_with_agent(agent, new, items).await,
        };
        self.announce(&created, || Change::Created(new.row.id.clone()));
        created
    }

    /// An uploaded agent by id.
    pub async fn get_agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_agent(id).await,
        }
    }

    /// Uploaded agents, oldest first, at most `cap`.
    pub async fn list_agents(&self, cap: u32) -> Result<Vec<AgentRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_agents(cap).await,
        }
    }

    /// The bundle bytes stored under `sha256`.
    pub async fn agent_bundle(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.agent_bundle(sha256).await,
        }
    }
}
