-- 001_init (SQLite): bookkeeping of the serving database.
-- The serving tables themselves are versioned physical tables
-- (recommendations__v000012, ...) created by each publish from
-- personalization/serving/schema.py; apps read the stable VIEWs
-- (recommendations, user_insights, ...) that each switch re-points.

-- Every version ever built (version numbers are never reused).
CREATE TABLE serving_versions (
    version       INTEGER PRIMARY KEY AUTOINCREMENT,
    generated_for TEXT NOT NULL,                 -- YYYY-MM-DD
    model_version TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('building', 'ready', 'failed', 'dropped')),
    row_counts    TEXT,                          -- JSON {table: rows}
    created_at    TEXT NOT NULL,                 -- ISO-8601 UTC
    dropped_at    TEXT
);

-- Exactly one row: the version the stable views point at.
CREATE TABLE serving_state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    current_version INTEGER REFERENCES serving_versions (version),
    switched_at     TEXT
);
INSERT INTO serving_state (id, current_version, switched_at) VALUES (1, NULL, NULL);

-- One row per publish or rollback, successful or not.
CREATE TABLE publish_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    version       INTEGER,
    action        TEXT NOT NULL CHECK (action IN ('publish', 'rollback')),
    generated_for TEXT,
    model_version TEXT,
    row_counts    TEXT,                          -- JSON {table: rows}
    status        TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
    details       TEXT,                          -- JSON: reasons, previous version, variant info
    published_at  TEXT NOT NULL                  -- ISO-8601 UTC
);
CREATE INDEX publish_log_generated_for ON publish_log (generated_for, id);
CREATE INDEX publish_log_version ON publish_log (version);

-- Who did what to whom (privacy deletions, manual rollbacks, ...).
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    who     TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT,
    details TEXT,                                -- JSON
    at      TEXT NOT NULL                        -- ISO-8601 UTC
);
CREATE INDEX audit_log_subject ON audit_log (subject, at);

-- Database roles that must get SELECT on the stable views again after each switch
-- (unused on SQLite, which has no roles; kept so both schemas match).
CREATE TABLE serving_reader_roles (
    role       TEXT PRIMARY KEY,
    granted_at TEXT NOT NULL
);
