//! `outbox_dead`: outbox rows Kafka refused for good (a message over the
//! producer's or the topic's size limit, a record the broker calls
//! invalid).
//!
//! Why: the relay publishes the outbox oldest first and commits a pass only
//! once every row of it was acknowledged, so one row Kafka will never take
//! failed every pass, and every message behind it waited for an operator
//! with psql. Such a row now leaves the outbox, in the relay's transaction,
//! for this table, with the broker's answer; the rest of the batch is
//! published and the backlog drains. Queue health and `/metrics` report
//! the table's size, and `sagaflow outbox requeue` puts rows back once
//! the cause is fixed (a topic's `max.message.bytes` raised, say).
//!
//! The columns are the outbox's, in order, then when and why the row was
//! set aside; `id` is the outbox id it had.

const UP: &str = r#"
CREATE TABLE outbox_dead (
    id          BIGINT PRIMARY KEY,
    message_id  UUID NOT NULL UNIQUE,
    topic       TEXT NOT NULL,
    key         TEXT NOT NULL,
    payload     JSONB NOT NULL,
    headers     JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL,
    failed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    error       TEXT NOT NULL
);
"#;

const DOWN: &str = "DROP TABLE outbox_dead;";

crate::sql_migration!(UP, DOWN);
