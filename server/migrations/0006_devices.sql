-- Paired devices (issue 13): one row per device token. The token itself is never stored, only its sha256
-- (hex). Times are epoch seconds; `last_seen_at` is refreshed at most once a minute per device.

CREATE TABLE devices (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    token_sha256  TEXT    NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER,
    expires_at    INTEGER
);
