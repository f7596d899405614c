-- One row the server rewrites while durable writes are failing, to learn when the disk takes writes again.
CREATE TABLE storage_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
