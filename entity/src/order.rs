//! `orders`: what the buyer sees. Its status is moved only by the order
//! payment saga (and, for the first insert, by the API).

use rust_decimal::Decimal;
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::StateValues;

/// An order's status.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Inserted by `POST /orders` together with its saga; left by the saga only.
    #[sea_orm(string_value = "PENDING")]
    Pending,
    /// Set by the saga's completion hook, in the transaction that completes
    /// the saga, after the funds participant confirmed the debit.
    #[sea_orm(string_value = "PAID")]
    Paid,
    /// Set when the saga compensated: the debit was refused or never
    /// confirmed, and any debit that did happen was refunded.
    #[sea_orm(string_value = "FAILED")]
    Failed,
    /// Set when an operator cancelled the saga and compensation finished.
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
    /// Set by the refund saga's completion hook once the amount was
    /// credited back to the buyer.
    #[sea_orm(string_value = "REFUNDED")]
    Refunded,
}

impl StateValues for OrderStatus {
    const ALL: &'static [Self] = &[
        Self::Pending,
        Self::Paid,
        Self::Failed,
        Self::Cancelled,
        Self::Refunded,
    ];
    fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Paid => "PAID",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::Refunded => "REFUNDED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub order_no: String,
    pub user_id: i64,
    #[sea_orm(column_type = "Decimal(Some((18, 2)))")]
    pub amount: Decimal,
    pub status: OrderStatus,
    #[sea_orm(unique)]
    pub saga_id: Uuid,
    #[sea_orm(unique)]
    pub idempotency_key: Option<String>,
    /// SHA-256 of the canonical request body, to tell a retried request
    /// from another request that reuses the same idempotency key.
    pub request_fingerprint: Option<String>,
    pub failure_reason: Option<String>,
    /// The refund saga of a PAID order, while one runs and after it
    /// succeeded; cleared when a refund is abandoned.
    #[sea_orm(unique)]
    pub refund_saga_id: Option<Uuid>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::account::Entity",
        from = "Column::UserId",
        to = "super::account::Column::UserId"
    )]
    Account,
}

impl Related<super::account::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Account.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
