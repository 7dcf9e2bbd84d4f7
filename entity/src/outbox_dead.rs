//! `outbox_dead`: outbox rows the broker refused for good, set aside by the
//! relay so that the messages behind them are published. [`requeue`]
//! (`sagaflow outbox requeue`, `POST /outbox/set-aside/requeue`, the
//! dashboard) moves them back to `outbox`.

use sea_orm::entity::prelude::*;
use sea_orm::{FromQueryResult, Statement};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox_dead")]
pub struct Model {
    /// The id the row had in `outbox`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i64,
    #[sea_orm(unique)]
    pub message_id: Uuid,
    /// Full topic name, prefix included.
    pub topic: String,
    pub key: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    /// Kafka headers as a JSON object of strings.
    #[sea_orm(column_type = "JsonBinary")]
    pub headers: Json,
    /// When the row was written to the outbox.
    pub created_at: DateTimeWithTimeZone,
    /// When the relay set it aside.
    pub failed_at: DateTimeWithTimeZone,
    /// The broker's (or librdkafka's) answer.
    pub error: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// A set-aside row as operators see it: everything but the payload, which
/// may be the very size Kafka refused, and is only measured.
#[derive(Clone, Debug, PartialEq, Eq, FromQueryResult)]
pub struct Summary {
    /// The id the row had in `outbox`; [`requeue`] takes it.
    pub id: i64,
    /// The message's id, which consumers dedupe by.
    pub message_id: Uuid,
    /// Full topic name, prefix included.
    pub topic: String,
    /// The message key.
    pub key: String,
    /// The payload's size as Postgres writes its JSON out, in bytes: a few
    /// percent more than the compact JSON the relay sent (a space after
    /// each `:` and `,`), measured without reading the payload out.
    pub payload_bytes: i64,
    /// When the row was written to the outbox.
    pub created_at: DateTimeWithTimeZone,
    /// When the relay set it aside.
    pub failed_at: DateTimeWithTimeZone,
    /// The broker's (or librdkafka's) answer.
    pub error: String,
}

/// The oldest `limit` set-aside rows (all of them for `None`), oldest
/// first.
pub async fn list<C: ConnectionTrait>(db: &C, limit: Option<u64>) -> Result<Vec<Summary>, DbErr> {
    Summary::find_by_statement(Statement::from_sql_and_values(
        db.get_database_backend(),
        "SELECT id, message_id, topic, key, octet_length(payload::text)::bigint AS payload_bytes, \
                created_at, failed_at, error \
           FROM outbox_dead ORDER BY id LIMIT $1",
        [limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX)).into()],
    ))
    .all(db)
    .await
}

/// How many rows are set aside.
pub async fn count<C: ConnectionTrait>(db: &C) -> Result<u64, DbErr> {
    Entity::find().count(db).await
}

/// Which set-aside rows [`requeue`] moves back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// Every one.
    All,
    /// Those with these (old outbox) ids.
    Ids(Vec<i64>),
    /// Those for this topic (its full name, prefix included): once its
    /// `max.message.bytes` is raised, say.
    Topic(String),
}

/// Moves rows back to the end of the outbox, in their old order. A
/// message whose id is already back in the outbox (a step's retry wrote
/// it again) is that same message, and is not written twice.
const REQUEUE_SQL: &str = "\
WITH moved AS ( \
    DELETE FROM outbox_dead \
     WHERE ($1::bigint[] IS NULL OR id = ANY($1)) AND ($2::text IS NULL OR topic = $2) \
    RETURNING id, message_id, topic, key, payload, headers), \
requeued AS ( \
    INSERT INTO outbox (message_id, topic, key, payload, headers) \
    SELECT message_id, topic, key, payload, headers FROM moved ORDER BY id \
    ON CONFLICT (message_id) DO NOTHING) \
SELECT id FROM moved ORDER BY id";

/// Puts set-aside rows back in the outbox, once what made Kafka refuse
/// them is fixed, and wakes the relays; returns the ids moved, in order.
/// An id not set aside is not an error, and is missing from the answer. A
/// row Kafka still refuses is set aside again by the next relay pass.
pub async fn requeue(db: &DatabaseConnection, which: Requeue) -> Result<Vec<i64>, DbErr> {
    use sea_orm::TransactionTrait;
    let (ids, topic) = match which {
        Requeue::All => (None, None),
        Requeue::Ids(ids) => (Some(ids), None),
        Requeue::Topic(topic) => (None, Some(topic)),
    };
    let tx = db.begin().await?;
    let moved = tx
        .query_all(Statement::from_sql_and_values(
            tx.get_database_backend(),
            REQUEUE_SQL,
            [ids.into(), topic.into()],
        ))
        .await?
        .iter()
        .map(|r| r.try_get::<i64>("", "id"))
        .collect::<Result<Vec<_>, _>>()?;
    if !moved.is_empty() {
        // Delivered at commit. In the transaction, not after it, so that
        // a failed wake-up cannot report a requeue that happened as
        // failed (relays also poll; the wake-up only spares the wait).
        tx.execute(Statement::from_string(
            tx.get_database_backend(),
            format!("SELECT pg_notify('{}', '')", crate::wake::OUTBOX_CHANNEL),
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(moved)
}
