//! `outbox_dead`: outbox rows the broker refused for good, set aside by the
//! relay so that the messages behind them are published. `sagaflow outbox
//! requeue` moves them back to `outbox`.

use sea_orm::entity::prelude::*;

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
