//! `inbox`: the message ids each consumer has applied. The row is inserted in
//! the same transaction as the message's effect, so a redelivered message
//! finds it and changes nothing.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "inbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub consumer: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: Uuid,
    /// What the consumer decided, kept so that a retried command with the
    /// same message id gets the same answer again.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub result: Option<Json>,
    pub received_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
