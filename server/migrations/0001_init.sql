-- omnigent-rs server schema v1 (SQLite). Times are epoch milliseconds; the API emits seconds.
-- `sessions` merges omnigent's conversations + omnigent_conversation_metadata (reference §8.5).

CREATE TABLE sessions (
    pk                          INTEGER PRIMARY KEY,
    id                          TEXT    NOT NULL UNIQUE,
    agent_id                    TEXT    NOT NULL,
    title                       TEXT,
    labels                      TEXT    NOT NULL DEFAULT '{}',
    status                      TEXT    NOT NULL DEFAULT 'idle',
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL,
    archived                    INTEGER NOT NULL DEFAULT 0,
    kind                        TEXT    NOT NULL DEFAULT 'default',
    parent_session_id           TEXT,
    root_session_id             TEXT    NOT NULL,
    sub_agent_name              TEXT,
    runner_id                   TEXT,
    host_id                     TEXT,
    workspace                   TEXT,
    git_branch                  TEXT,
    model_override              TEXT,
    reasoning_effort            TEXT,
    cost_control_mode_override  TEXT,
    external_session_id         TEXT,
    terminal_launch_args        TEXT,
    -- next item position (gapless per session)
    next_position               INTEGER NOT NULL DEFAULT 0,
    -- highest SSE sequence number handed out (reserved in blocks so ids never repeat across restarts)
    seq_reserved                INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_created ON sessions (created_at, pk);
CREATE INDEX sessions_by_updated ON sessions (updated_at, pk);
CREATE INDEX sessions_by_runner  ON sessions (runner_id) WHERE runner_id IS NOT NULL;

CREATE TABLE items (
    pk           INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    session_pk   INTEGER NOT NULL REFERENCES sessions (pk) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    -- the SSE sequence number the item was published under (0: never published, e.g. initial or forked)
    seq          INTEGER NOT NULL DEFAULT 0,
    type         TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    response_id  TEXT,
    created_at   INTEGER NOT NULL,
    created_by   TEXT,
    data         TEXT    NOT NULL,
    search_text  TEXT    NOT NULL DEFAULT '',
    UNIQUE (session_pk, position)
);
CREATE INDEX items_by_seq ON items (session_pk, seq);
CREATE INDEX items_by_response ON items (session_pk, response_id);

-- Full-text search over session titles and item text (external-content FTS5, kept in sync by triggers).
CREATE VIRTUAL TABLE sessions_fts USING fts5 (title, content = 'sessions', content_rowid = 'pk');
CREATE VIRTUAL TABLE items_fts USING fts5 (search_text, content = 'items', content_rowid = 'pk');

CREATE TRIGGER sessions_fts_insert AFTER INSERT ON sessions BEGIN
    INSERT INTO sessions_fts (rowid, title) VALUES (new.pk, coalesce(new.title, ''));
END;
CREATE TRIGGER sessions_fts_delete AFTER DELETE ON sessions BEGIN
    INSERT INTO sessions_fts (sessions_fts, rowid, title) VALUES ('delete', old.pk, coalesce(old.title, ''));
END;
CREATE TRIGGER sessions_fts_update AFTER UPDATE OF title ON sessions BEGIN
    INSERT INTO sessions_fts (sessions_fts, rowid, title) VALUES ('delete', old.pk, coalesce(old.title, ''));
    INSERT INTO sessions_fts (rowid, title) VALUES (new.pk, coalesce(new.title, ''));
END;

CREATE TRIGGER items_fts_insert AFTER INSERT ON items BEGIN
    INSERT INTO items_fts (rowid, search_text) VALUES (new.pk, new.search_text);
END;
CREATE TRIGGER items_fts_delete AFTER DELETE ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, search_text) VALUES ('delete', old.pk, old.search_text);
END;
