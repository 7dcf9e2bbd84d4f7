//! `outbox`: Kafka messages waiting to be published. A row is written in the
//! same transaction as the state change that causes it, and deleted by the
//! relay once the broker acknowledged it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
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
    pub created_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
