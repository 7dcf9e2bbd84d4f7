//! `saga_events`: the append-only history of each saga instance.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "saga_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub saga_id: Uuid,
    /// What happened, e.g. `COMMAND_SENT`, `REPLY_RECEIVED`, `COMPLETED`.
    pub kind: String,
    pub step: Option<i32>,
    pub attempt: Option<i32>,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub detail: Json,
    /// Who caused it: a worker id, a consumer, or an operator.
    pub actor: Option<String>,
    pub created_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::saga_instance::Entity",
        from = "Column::SagaId",
        to = "super::saga_instance::Column::Id"
    )]
    SagaInstance,
}

impl Related<super::saga_instance::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::SagaInstance.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
