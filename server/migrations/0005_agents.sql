-- Uploaded agents (reference omnigent-server-v1.md §4.1 `agents`; wire notes "Agent specs"): one row per agent a
-- bundle upload created (the multipart `POST /v1/sessions`, session-scoped). The built-in agents are not
-- stored (server/src/agents.rs). `harness` is the spec's harness name as written (`openai-agents`, …); `spec`
-- is the parsed spec as JSON text, `${VAR}`s left as written (they belong to the runner).
-- The bundle bytes are kept once per content in `agent_bundles`, keyed by their sha256.
CREATE TABLE agent_bundles (
    sha256      TEXT    PRIMARY KEY,
    size        INTEGER NOT NULL,
    bytes       BLOB    NOT NULL
);
CREATE TABLE agents (
    id              TEXT    PRIMARY KEY,
    name            TEXT    NOT NULL,
    version         TEXT    NOT NULL,
    harness         TEXT    NOT NULL,
    description     TEXT    NOT NULL DEFAULT '',
    spec            TEXT    NOT NULL,
    bundle_sha256   TEXT    NOT NULL REFERENCES agent_bundles (sha256),
    session_scoped  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX agents_by_created ON agents (created_at, id);
-- A session's delete removes its session-scoped agent once no session (a fork) uses it, then the bundle once
-- no agent does.
CREATE INDEX sessions_by_agent ON sessions (agent_id);
CREATE INDEX agents_by_bundle ON agents (bundle_sha256);
