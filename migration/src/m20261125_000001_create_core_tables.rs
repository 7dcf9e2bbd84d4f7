//! Accounts, ledger, orders, the saga state machine and its history, and the
//! outbox and inbox that make Kafka exactly-once in effect.

/// Every constraint that keeps a bad state out lives in this SQL, so that no
/// code path (nor an operator with psql) can write one.
const UP: &str = r#"
CREATE TABLE accounts (
    user_id     BIGINT PRIMARY KEY CHECK (user_id > 0),
    balance     NUMERIC(18,2) NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE ledger_entries (
    id             BIGSERIAL PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES accounts (user_id),
    saga_id        UUID,
    kind           TEXT NOT NULL CHECK (kind IN ('DEPOSIT', 'DEBIT', 'REFUND')),
    amount         NUMERIC(18,2) NOT NULL CHECK (amount > 0),
    balance_after  NUMERIC(18,2) NOT NULL CHECK (balance_after >= 0),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- a saga debits or refunds at most once; deposits belong to no saga
    CONSTRAINT ledger_entries_saga_kind_key UNIQUE (saga_id, kind),
    CONSTRAINT ledger_entries_saga_presence CHECK ((kind = 'DEPOSIT') = (saga_id IS NULL))
);
CREATE INDEX ledger_entries_user_recent ON ledger_entries (user_id, id DESC);

CREATE TABLE orders (
    order_no             TEXT PRIMARY KEY CHECK (length(order_no) BETWEEN 1 AND 64),
    user_id              BIGINT NOT NULL REFERENCES accounts (user_id),
    amount               NUMERIC(18,2) NOT NULL CHECK (amount > 0),
    status               TEXT NOT NULL DEFAULT 'PENDING'
                         CHECK (status IN ('PENDING', 'PAID', 'FAILED', 'CANCELLED')),
    saga_id              UUID NOT NULL UNIQUE,
    idempotency_key      TEXT UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_fingerprint  TEXT,
    failure_reason       TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT orders_key_has_fingerprint
        CHECK ((idempotency_key IS NULL) = (request_fingerprint IS NULL))
);
CREATE INDEX orders_user_created ON orders (user_id, created_at DESC);

CREATE TABLE saga_instances (
    id                  UUID PRIMARY KEY,
    saga_type           TEXT NOT NULL,
    definition_version  INT NOT NULL CHECK (definition_version > 0),
    state               TEXT NOT NULL CHECK (state IN
                        ('RUNNING', 'WAITING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')),
    current_step        INT NOT NULL DEFAULT 0 CHECK (current_step >= 0),
    attempt             INT NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    cancel_requested    BOOLEAN NOT NULL DEFAULT false,
    next_run_at         TIMESTAMPTZ,
    lease_owner         TEXT,
    lease_expires_at    TIMESTAMPTZ,
    deadline            TIMESTAMPTZ,
    data                JSONB NOT NULL,
    last_error          TEXT,
    version             BIGINT NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- an active saga always has a due time, a finished one never has:
    -- no saga can be forgotten by the claim loop
    CONSTRAINT saga_instances_due_iff_active
        CHECK ((state IN ('RUNNING', 'WAITING', 'COMPENSATING')) = (next_run_at IS NOT NULL)),
    CONSTRAINT saga_instances_waiting_has_deadline
        CHECK (state <> 'WAITING' OR deadline IS NOT NULL),
    CONSTRAINT saga_instances_lease_pair
        CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL))
);
-- The claim query's index: only active sagas, so millions of finished ones
-- cost nothing; ordered by due time, so the claim needs no sort.
CREATE INDEX saga_instances_due ON saga_instances (next_run_at)
    WHERE state IN ('RUNNING', 'WAITING', 'COMPENSATING');
CREATE INDEX saga_instances_created ON saga_instances (created_at DESC, id DESC);

CREATE TABLE saga_events (
    id          BIGSERIAL PRIMARY KEY,
    saga_id     UUID NOT NULL REFERENCES saga_instances (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    step        INT,
    attempt     INT,
    from_state  TEXT,
    to_state    TEXT,
    detail      JSONB NOT NULL DEFAULT '{}'::jsonb,
    actor       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX saga_events_saga ON saga_events (saga_id, id);

CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    message_id  UUID NOT NULL UNIQUE,
    topic       TEXT NOT NULL,
    key         TEXT NOT NULL,
    payload     JSONB NOT NULL,
    headers     JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE inbox (
    consumer     TEXT NOT NULL,
    message_id   UUID NOT NULL,
    result       JSONB,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- Wake the relay and the workers without polling: one notification per
-- inserting statement (Postgres folds identical payloads within a transaction).
CREATE FUNCTION sagaflow_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sagaflow_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION sagaflow_notify_outbox();

CREATE FUNCTION sagaflow_notify_saga() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sagaflow_saga', '');
    RETURN NULL;
END $$;
CREATE TRIGGER saga_instances_notify AFTER INSERT ON saga_instances
    FOR EACH STATEMENT EXECUTE FUNCTION sagaflow_notify_saga();
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS inbox;
DROP TABLE IF EXISTS outbox;
DROP TABLE IF EXISTS saga_events;
DROP TABLE IF EXISTS saga_instances;
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS ledger_entries;
DROP TABLE IF EXISTS accounts;
DROP FUNCTION IF EXISTS sagaflow_notify_outbox();
DROP FUNCTION IF EXISTS sagaflow_notify_saga();
"#;

crate::sql_migration!(UP, DOWN);
