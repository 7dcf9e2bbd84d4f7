//! `ledger_entries`: every balance change, append-only. Unique on
//! `(saga_id, kind)`, so a saga can debit or refund an account at most once.

use rust_decimal::Decimal;
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

use crate::StateValues;

/// What a ledger entry did to the balance.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "Text")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LedgerKind {
    /// Money paid in through `POST /accounts/{user_id}/deposits`; has no saga.
    #[sea_orm(string_value = "DEPOSIT")]
    Deposit,
    /// Money taken by the funds participant for a saga's debit command.
    #[sea_orm(string_value = "DEBIT")]
    Debit,
    /// Money given back by the funds participant when a saga compensates.
    #[sea_orm(string_value = "REFUND")]
    Refund,
    /// A refund saga's credit taken back because the saga gave up on it.
    #[sea_orm(string_value = "REFUND_VOID")]
    RefundVoid,
}

impl StateValues for LedgerKind {
    const ALL: &'static [Self] = &[Self::Deposit, Self::Debit, Self::Refund, Self::RefundVoid];
    fn as_str(&self) -> &'static str {
        match self {
            Self::Deposit => "DEPOSIT",
            Self::Debit => "DEBIT",
            Self::Refund => "REFUND",
            Self::RefundVoid => "REFUND_VOID",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ledger_entries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub saga_id: Option<Uuid>,
    pub kind: LedgerKind,
    #[sea_orm(column_type = "Decimal(Some((18, 2)))")]
    pub amount: Decimal,
    #[sea_orm(column_type = "Decimal(Some((18, 2)))")]
    pub balance_after: Decimal,
    pub created_at: DateTimeWithTimeZone,
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
