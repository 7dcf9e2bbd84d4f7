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

/// Whether `err` says the database cannot answer now, and that nothing of
/// the request was done: no connection could be had (the pool timed out
/// or is closed, the server is down or refusing connections: sea-orm's
/// `ConnectionAcquire` and `Conn`, which it returns only while acquiring),
/// or the server answered that it gave up on the statement for want of
/// time, locks or resources, or to let another go first, which rolls the
/// statement back (SQLSTATE classes 08 connection exception but 08P01
/// protocol violation, 53 insufficient resources but 53400 configuration
/// limit exceeded, 57 operator intervention, which holds
/// `statement_timeout`'s 57014, and 55P03 lock not available, 40001
/// serialization failure, 40P01 deadlock, 25006 read-only transaction: a
/// standby after a failover). The same request may succeed a moment
/// later, so an API answers 503 with `Retry-After` rather than 500.
///
/// A connection lost mid-statement is not one of these: the statement,
/// or the commit, may have taken effect, and a client told to retry would
/// repeat it.
pub fn is_unavailable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::DbErr;
    if let Some(e) = server_error(err) {
        return e.code().is_some_and(|c| {
            let c = c.as_ref();
            (["08", "53", "57"].iter().any(|class| c.starts_with(class))
                && !["08P01", "53400"].contains(&c))
                || ["55P03", "40001", "40P01", "25006"].contains(&c)
        });
    }
    matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_))
}

#[cfg(test)]
mod tests {
    use super::is_unavailable;
    use sea_orm::{sqlx, ConnAcquireErr, DbErr, RuntimeErr};

    /// No connection to be had means nothing was sent; a connection lost
    /// mid-statement may have committed, and is not "unavailable". (The
    /// SQLSTATE cases need a server's answer: `tests/api_http.rs`.)
    #[test]
    fn only_errors_after_which_nothing_was_done_count_as_unavailable() {
        for (err, want) in [
            (DbErr::ConnectionAcquire(ConnAcquireErr::Timeout), true),
            (
                DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
                true,
            ),
            (
                DbErr::Conn(RuntimeErr::SqlxError(sqlx::Error::Io(
                    std::io::ErrorKind::ConnectionRefused.into(),
                ))),
                true,
            ),
            (
                DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::Io(
                    std::io::ErrorKind::ConnectionReset.into(),
                ))),
                false,
            ),
            (
                DbErr::Exec(RuntimeErr::SqlxError(sqlx::Error::WorkerCrashed)),
                false,
            ),
            (DbErr::Custom("anything else".into()), false),
            (DbErr::RecordNotFound("x".into()), false),
        ] {
            assert_eq!(is_unavailable(&err), want, "{err:?}");
        }
    }
}
