//! Small helpers over sea-orm's raw statements: every query is
//! parameterised, none is built by string concatenation of values.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, Statement, Value};

pub(crate) fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

pub(crate) async fn exec<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<ExecResult, DbErr> {
    db.execute(stmt(sql, values)).await
}

pub(crate) async fn one<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<Option<QueryResult>, DbErr> {
    db.query_one(stmt(sql, values)).await
}

pub(crate) async fn all<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<Vec<QueryResult>, DbErr> {
    db.query_all(stmt(sql, values)).await
}

/// Records `message_id` as seen by `consumer`; `false` if it already was.
/// Runs in the caller's transaction, so the mark commits with the effect.
pub(crate) async fn inbox_insert<C: ConnectionTrait>(
    conn: &C,
    consumer: &str,
    message_id: uuid::Uuid,
) -> Result<bool, DbErr> {
    Ok(one(
        conn,
        "INSERT INTO inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING message_id",
        [consumer.into(), message_id.into()],
    )
    .await?
    .is_some())
}

/// Records every id of `message_ids` as seen by `consumer`, in one
/// statement, and returns those that were not seen before: a consumer's
/// whole batch costs one round trip, not one per message. Ids are
/// inserted in order, so two consumers recording overlapping batches (a
/// rebalance) queue on each other rather than deadlock. Runs in the
/// caller's transaction, so the marks commit with the effects.
pub(crate) async fn inbox_insert_many<C: ConnectionTrait>(
    conn: &C,
    consumer: &str,
    mut message_ids: Vec<uuid::Uuid>,
) -> Result<std::collections::HashSet<uuid::Uuid>, DbErr> {
    if message_ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    message_ids.sort_unstable();
    message_ids.dedup();
    all(
        conn,
        "INSERT INTO inbox (consumer, message_id) SELECT $1, id FROM unnest($2::uuid[]) AS t(id) \
         ON CONFLICT DO NOTHING RETURNING message_id",
        [consumer.into(), message_ids.into()],
    )
    .await?
    .iter()
    .map(|r| r.try_get::<uuid::Uuid>("", "message_id"))
    .collect()
}

/// A W3C `traceparent` whose trace id is the saga id, so that every message
/// of one saga lands in one trace.
pub(crate) fn traceparent(saga_id: uuid::Uuid) -> String {
    sagaflow_workflows::messages::traceparent(saga_id, rand::random::<u64>())
}

/// The round of each item: how many items before it share its key. Rows
/// that must not meet in one set-based statement (two postings to one
/// account, two moves of one order) go in successive rounds, one
/// statement each, in their order, which applies them as one by one would.
pub(crate) fn rounds_by<'a, T, K: std::hash::Hash + Eq>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<usize> {
    let mut seen: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    items
        .iter()
        .map(|item| {
            let n = seen.entry(key(item)).or_default();
            *n += 1;
            *n - 1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::rounds_by;

    #[test]
    fn items_with_one_key_go_in_successive_rounds_in_order() {
        assert_eq!(
            rounds_by(&[1, 2, 1, 3, 1, 2], |k| *k),
            vec![0, 0, 1, 0, 2, 1]
        );
        assert_eq!(rounds_by(&["a", "b"], |k| *k), vec![0, 0]);
        assert!(rounds_by(&[] as &[u8], |k| *k).is_empty());
    }
}
