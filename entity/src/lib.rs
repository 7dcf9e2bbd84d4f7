//! sea-orm entities for sagaflow's tables, one module per table.
//!
//! The schema itself is owned by the `sagaflow-migration` crate; these types
//! describe it for queries. Every state column has a Rust enum here and a
//! `CHECK` constraint there, and `tests/schema.rs` checks that the two lists
//! agree.

pub mod account;
pub mod inbox;
pub mod ledger_entry;
pub mod order;
pub mod outbox;
pub mod outbox_dead;
pub mod saga_event;
pub mod saga_instance;
pub mod wake;

pub use ledger_entry::LedgerKind;
pub use order::OrderStatus;
pub use saga_instance::{OperatorRequest, Resolution, SagaState};

/// Lists every value of a string-backed state enum, in declaration order.
///
/// Used by the schema test to compare the Rust enums with the `CHECK`
/// constraints in the database.
pub trait StateValues: Sized + 'static {
    /// Every variant, in declaration order.
    const ALL: &'static [Self];
    /// The value stored in the database.
    fn as_str(&self) -> &'static str;
}

/// One column of a batch statement's rows, as an array parameter: `f` of
/// each item, in order. Batch statements take one array per column and
/// `unnest` them, so that their text (and prepared plan) is the same for
/// one row or a hundred.
pub fn column<T, U>(items: &[T], f: impl Fn(&T) -> U) -> sea_orm::Value
where
    Vec<U>: Into<sea_orm::Value>,
{
    items.iter().map(f).collect::<Vec<U>>().into()
}

/// The error Postgres answered a statement with, if it answered: `None`
/// for anything else (no connection, a connection lost mid-statement,
/// sea-orm's own errors), whose outcome is unknown. Its `code()` is the
/// SQLSTATE.
pub fn server_error(err: &sea_orm::DbErr) -> Option<&dyn sea_orm::sqlx::error::DatabaseError> {
    use sea_orm::{sqlx, DbErr, RuntimeErr};
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::Database(e)))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Database(e))) => Some(e.as_ref()),
        _ => None,
    }
}

/// Whether `err` says the database cannot answer now rather than that the
/// request is wrong: no connection could be had (the pool timed out, the
/// server is down or refusing connections), the connection broke, or the
/// server gave up on the statement for want of time or resources
/// (SQLSTATE classes 08 connection exception, 53 insufficient resources,
/// 57 operator intervention, which holds `statement_timeout`'s 57014,
/// and 55P03 lock not available), or chose it as the loser of a conflict
/// (40001 serialization failure, 40P01 deadlock). Nothing of the statement
/// was kept and the same request may succeed a moment later, so an API
/// answers 503 with `Retry-After` rather than 500.
pub fn is_unavailable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{sqlx, DbErr, RuntimeErr};
    if let Some(e) = server_error(err) {
        return e.code().is_some_and(|c| {
            ["08", "53", "57"].iter().any(|class| c.starts_with(class))
                || ["55P03", "40001", "40P01"].contains(&c.as_ref())
        });
    }
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            )
        }
        _ => false,
    }
}
