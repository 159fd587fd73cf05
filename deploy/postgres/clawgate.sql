SET client_min_messages = warning;

-- clawgate on PostgreSQL: the decision log, its checkpoints and the
-- runtime overrides. Run once as a superuser (or the database owner):
--
--   psql -v ON_ERROR_STOP=1 -d clawgate -f clawgate.sql
--   ALTER ROLE clawgate PASSWORD '...';   -- or use peer/cert authentication
--
-- The role `clawgate` that the replicas use may append records and
-- checkpoints but never change or remove them: it has no UPDATE or DELETE
-- grant on those tables, and a trigger refuses both for everyone (a
-- superuser must disable the trigger to tamper, which `audit verify`
-- still catches). It may move a chain's head (the compare-and-set that
-- keeps one writer per chain) and manage overrides.

CREATE TABLE IF NOT EXISTS audit_chains (
    chain    text PRIMARY KEY,
    genesis  text NOT NULL,
    seq      bigint NOT NULL DEFAULT 0,
    hash     text NOT NULL,
    closed   boolean NOT NULL DEFAULT false,
    created  timestamptz NOT NULL DEFAULT now(),
    updated  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS audit_records (
    chain text NOT NULL REFERENCES audit_chains (chain),
    seq bigint NOT NULL,
    ts text NOT NULL,
    kind text NOT NULL,
    request_id text NOT NULL,
    mode text, agent text, cert_fp text, run_id text, client_addr text,
    method text, host text, path text, scope text, rule text,
    decision text, reason text NOT NULL, would_deny text,
    credential_kind text, credential_ref text, policy_digest text,
    status bigint, bytes_up bigint, bytes_down bigint, duration_ms bigint,
    detail text,
    prev_hash text NOT NULL,
    hash text NOT NULL,
    action text,
    exception text,
    mcp text,
    PRIMARY KEY (chain, seq)
);
-- Added after the first release: logs made before it gain the column.
ALTER TABLE audit_records ADD COLUMN IF NOT EXISTS mcp text;
CREATE INDEX IF NOT EXISTS audit_records_ts ON audit_records (ts);
CREATE INDEX IF NOT EXISTS audit_records_agent_ts ON audit_records (agent, ts);
CREATE INDEX IF NOT EXISTS audit_records_request ON audit_records (request_id);

CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq bigint PRIMARY KEY,
    ts text NOT NULL,
    made_by text NOT NULL,
    heads text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);

CREATE TABLE IF NOT EXISTS overrides (
    id text PRIMARY KEY,
    kind text NOT NULL,
    target text NOT NULL,
    reason text NOT NULL,
    created_by text NOT NULL,
    created bigint NOT NULL,
    expires bigint NOT NULL,
    version bigint NOT NULL
);

-- One row: bumped with every change to `overrides`, polled every second.
CREATE TABLE IF NOT EXISTS overrides_version (
    id int PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO overrides_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;

-- Which version each replica has in force, and when it last said so.
CREATE TABLE IF NOT EXISTS replicas (
    replica text PRIMARY KEY,
    version bigint NOT NULL,
    seen timestamptz NOT NULL
);

CREATE OR REPLACE FUNCTION clawgate_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'clawgate: % on % is refused: the decision log is append-only',
        TG_OP, TG_TABLE_NAME;
END;
$$;

DROP TRIGGER IF EXISTS audit_records_append_only ON audit_records;
CREATE TRIGGER audit_records_append_only
    BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION clawgate_append_only();
DROP TRIGGER IF EXISTS audit_records_no_truncate ON audit_records;
CREATE TRIGGER audit_records_no_truncate
    BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION clawgate_append_only();
DROP TRIGGER IF EXISTS audit_checkpoints_append_only ON audit_checkpoints;
CREATE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION clawgate_append_only();
DROP TRIGGER IF EXISTS audit_checkpoints_no_truncate ON audit_checkpoints;
CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION clawgate_append_only();

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clawgate') THEN
        CREATE ROLE clawgate LOGIN;
    END IF;
END;
$$;

REVOKE ALL ON audit_chains, audit_records, audit_checkpoints, overrides,
    overrides_version, replicas FROM clawgate;
GRANT SELECT, INSERT ON audit_records, audit_checkpoints TO clawgate;
GRANT SELECT, INSERT ON audit_chains TO clawgate;
-- Only the head may move: the chain's name and genesis are fixed.
GRANT UPDATE (seq, hash, closed, updated) ON audit_chains TO clawgate;
GRANT SELECT, INSERT, DELETE ON overrides TO clawgate;
GRANT SELECT, UPDATE ON overrides_version TO clawgate;
GRANT SELECT, INSERT, UPDATE ON replicas TO clawgate;
