-- What a live web client keeps on the server (reference omnigent-server-v1.md §1.2, §7).
-- Read state per session (`PUT /v1/sessions/{id}/read-state`; 0.19.1 keeps it in memory only). Deleted with
-- its session.
CREATE TABLE read_state (
    session_pk  INTEGER PRIMARY KEY REFERENCES sessions (pk) ON DELETE CASCADE,
    last_seen   INTEGER NOT NULL,
    unread      INTEGER NOT NULL
);
-- Small per-user preferences as JSON text by key (this server has one user), e.g. `project_order`.
CREATE TABLE preferences (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
