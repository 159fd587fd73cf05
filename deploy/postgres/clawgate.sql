SET client_min_messages = warning;

-- clawgate on PostgreSQL: the decision log, its checkpoints and the
-- runtime overrides. Run once as a superuser: it creates roles and a
-- SECURITY DEFINER function, which a database owner without CREATEROLE
-- cannot do.
--
--   psql -v ON_ERROR_STOP=1 -d clawgate -f clawgate.sql
--   \password clawgate                  -- a SCRAM password, typed, not logged
--
-- The role `clawgate` that the replicas use may append records and
-- checkpoints but never change or remove them: it has no UPDATE or DELETE
-- grant on those tables, and a trigger refuses both for everyone. A
-- superuser can still get past it, by disabling the trigger or, with no DDL
-- at all, by `SET session_replication_role = replica` (which skips
-- ordinary triggers for that session); `audit verify` catches what either
-- changed, since the hash chain does not depend on the trigger. It may move a chain's head (the compare-and-set that
-- keeps one writer per chain) and manage overrides. Archived records
-- leave only through clawgate_prune, which the role clawgate_retention
-- alone may call (see below).

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
    trace_id text,
    PRIMARY KEY (chain, seq)
);
-- Added after the first release: logs made before it gain the column.
ALTER TABLE audit_records ADD COLUMN IF NOT EXISTS mcp text;
ALTER TABLE audit_records ADD COLUMN IF NOT EXISTS trace_id text;
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
    -- The one way out of the log: rows that clawgate_prune (below) is
    -- removing right now, after checking that recorded archives cover
    -- them. The setting alone opens nothing: the roles clawgate uses have
    -- no DELETE grant, and only clawgate_prune, which runs as the owner,
    -- sets it, for the rows it has checked.
    IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW' AND TG_TABLE_NAME = 'audit_records'
       AND OLD.chain = current_setting('clawgate.prune_chain', true)
       AND OLD.seq <= NULLIF(current_setting('clawgate.prune_upto', true), '')::bigint
    THEN
        RETURN OLD;
    END IF;
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

-- Pruning: removes the records of `p_chain` up to `p_upto`, and only if
-- (1) the chain keeps at least one record after them, (2) a `prune` record
-- in the operations chain `:ops` names that anchor (position and hash),
-- written in the same transaction by `clawgate audit prune` or `serve
-- --retain`, and (3) every record removed lies in the range of an `archive`
-- manifest recorded in `:ops` whose last record is still in the chain with
-- the hash the manifest names. Anything else is refused and nothing is
-- removed. It runs as its owner (the only way past the trigger above) and
-- only the role clawgate_retention may call it.
CREATE OR REPLACE FUNCTION clawgate_prune(p_chain text, p_upto bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    anchor text;
    removed bigint;
BEGIN
    IF p_chain = ':ops' THEN
        RAISE EXCEPTION 'clawgate: refused: the operations chain is never pruned';
    END IF;
    SELECT hash INTO anchor FROM audit_records WHERE chain = p_chain AND seq = p_upto;
    IF anchor IS NULL THEN
        RAISE EXCEPTION 'clawgate: refused: chain % has no record %', p_chain, p_upto;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM audit_records WHERE chain = p_chain AND seq > p_upto) THEN
        RAISE EXCEPTION 'clawgate: refused: chain % keeps its last record', p_chain;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM audit_records
        WHERE chain = ':ops' AND kind = 'prune'
          AND detail::jsonb ->> 'chain' = p_chain
          AND (detail::jsonb ->> 'anchor_seq')::bigint = p_upto
          AND detail::jsonb ->> 'anchor_hash' = anchor)
    THEN
        RAISE EXCEPTION 'clawgate: refused: no prune record names record % of chain %',
            p_upto, p_chain;
    END IF;
    IF EXISTS (
        WITH manifests AS MATERIALIZED (
            SELECT (a.detail::jsonb #>> '{manifest,first_seq}')::bigint AS first_seq,
                   (a.detail::jsonb #>> '{manifest,last_seq}')::bigint AS last_seq
            FROM audit_records a
            JOIN audit_records l
              ON l.chain = p_chain
             AND l.seq = (a.detail::jsonb #>> '{manifest,last_seq}')::bigint
             AND l.hash = a.detail::jsonb #>> '{manifest,last_hash}'
            WHERE a.chain = ':ops' AND a.kind = 'archive'
              AND a.detail::jsonb #>> '{manifest,chain}' = p_chain)
        SELECT 1 FROM audit_records r
        WHERE r.chain = p_chain AND r.seq <= p_upto
          AND NOT EXISTS (SELECT 1 FROM manifests m
                          WHERE r.seq BETWEEN m.first_seq AND m.last_seq))
    THEN
        RAISE EXCEPTION 'clawgate: refused: records of chain % up to % are not all covered by an archive recorded in the log',
            p_chain, p_upto;
    END IF;
    PERFORM set_config('clawgate.prune_chain', p_chain, true);
    PERFORM set_config('clawgate.prune_upto', p_upto::text, true);
    DELETE FROM audit_records WHERE chain = p_chain AND seq <= p_upto;
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('clawgate.prune_chain', '', true);
    PERFORM set_config('clawgate.prune_upto', '', true);
    RETURN removed;
END;
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clawgate') THEN
        CREATE ROLE clawgate LOGIN;
    END IF;
    -- The role of the one process that prunes (`serve --retain` on one
    -- replica, or `clawgate audit prune`): everything clawgate may do, and
    -- clawgate_prune. The replicas' role cannot remove a record.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clawgate_retention') THEN
        CREATE ROLE clawgate_retention LOGIN;
    END IF;
END;
$$;
GRANT clawgate TO clawgate_retention;

-- The operations chain `:ops` holds the archive manifests that pruning
-- trusts: only clawgate_retention (or a superuser) writes it, so the
-- replicas' role cannot forge a manifest. Checked once per statement.
CREATE OR REPLACE FUNCTION clawgate_ops_writers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'audit_chains' THEN
        IF NEW.chain = ':ops'
           AND NOT pg_has_role(current_user, 'clawgate_retention', 'USAGE') THEN
            RAISE EXCEPTION 'clawgate: only the role clawgate_retention writes the operations chain';
        END IF;
        RETURN NEW;
    END IF;
    IF EXISTS (SELECT 1 FROM new_records WHERE chain = ':ops')
       AND NOT pg_has_role(current_user, 'clawgate_retention', 'USAGE') THEN
        RAISE EXCEPTION 'clawgate: only the role clawgate_retention writes the operations chain';
    END IF;
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS audit_records_ops_writers ON audit_records;
CREATE TRIGGER audit_records_ops_writers
    AFTER INSERT ON audit_records REFERENCING NEW TABLE AS new_records
    FOR EACH STATEMENT EXECUTE FUNCTION clawgate_ops_writers();
DROP TRIGGER IF EXISTS audit_chains_ops_writers ON audit_chains;
CREATE TRIGGER audit_chains_ops_writers
    BEFORE INSERT OR UPDATE ON audit_chains
    FOR EACH ROW EXECUTE FUNCTION clawgate_ops_writers();
REVOKE ALL ON FUNCTION clawgate_prune(text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION clawgate_prune(text, bigint) TO clawgate_retention;

REVOKE ALL ON audit_chains, audit_records, audit_checkpoints, overrides,
    overrides_version, replicas FROM clawgate;
GRANT SELECT, INSERT ON audit_records, audit_checkpoints TO clawgate;
GRANT SELECT, INSERT ON audit_chains TO clawgate;
-- Only the head may move: the chain's name and genesis are fixed.
GRANT UPDATE (seq, hash, closed, updated) ON audit_chains TO clawgate;
GRANT SELECT, INSERT, DELETE ON overrides TO clawgate;
GRANT SELECT, UPDATE ON overrides_version TO clawgate;
GRANT SELECT, INSERT, UPDATE ON replicas TO clawgate;
