-- Hosts (reference omnigent-server-v1.md §4.1 `hosts`): one row per host id that ever connected.
-- `updated_at` is the last-seen time (refreshed on connect and periodically while connected).
-- Harness maps are JSON text (NULL when the host did not report them).

CREATE TABLE hosts (
    host_id               TEXT    PRIMARY KEY,
    name                  TEXT    NOT NULL DEFAULT '',
    owner                 TEXT    NOT NULL DEFAULT 'local',
    status                TEXT    NOT NULL DEFAULT 'offline',
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    configured_harnesses  TEXT,
    gateway_inference     TEXT,
    version               TEXT
);
