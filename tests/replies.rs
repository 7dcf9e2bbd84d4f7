//! The reply consumer's batches, on a real Postgres: one statement locks a
//! batch's sagas and records its replies in the inbox, and the order
//! hooks the batch reaches are applied together when it ends. A batch
//! with a redelivered copy, a reply to no saga and a malformed message
//! settles every saga once; applied again it changes nothing; and a batch
//! in which one order hook is refused commits nothing at all.

mod common;

use std::sync::Arc;

use common::{fresh_database, scalar_i64};
use sagaflow_api::orders::NewOrder;
use sagaflow_api::placer::{place_all, OrderRequest, Placed, SagaStart};
use sagaflow_worker::consumer::{Handled, Incoming};
use sagaflow_worker::replies;
use sagaflow_worker::session::Session;
use sagaflow_workflows::messages::{CommandEnvelope, ReplyEnvelope, ReplyOutcome, Topics};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use uuid::Uuid;

/// Places an order of 1.00 per user of `users` (each funded first) and
/// returns, per order, its number and the debit command the placing
/// statement queued for it.
async fn orders(
    db: &DatabaseConnection,
    topics: &Topics,
    users: &[i64],
) -> Vec<(String, CommandEnvelope)> {
    for user in users {
        db.execute_unprepared(&format!(
            "INSERT INTO accounts (user_id, balance) VALUES ({user}, 10.00)"
        ))
        .await
        .unwrap();
    }
    let start = SagaStart::new(
        Arc::new(sagaflow_workflows::Registry::builtin()),
        topics.clone(),
    );
    let requests = users
        .iter()
        .map(|&user_id| OrderRequest {
            new: NewOrder {
                user_id,
                amount: "1.00".parse().unwrap(),
            },
            key: None,
            fingerprint: None,
        })
        .collect();
    let mut out = Vec::new();
    for placed in place_all(db, &start, requests).await {
        let Ok(Some(Placed::New(order))) = placed else {
            panic!("{placed:?}");
        };
        let payload = db
            .query_one(Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT payload FROM outbox WHERE topic = '{}' AND payload->>'saga_id' = '{}'",
                    topics.funds_commands, order.saga_id
                ),
            ))
            .await
            .unwrap()
            .expect("the debit command")
            .try_get::<serde_json::Value>("", "payload")
            .unwrap();
        out.push((order.order_no, serde_json::from_value(payload).unwrap()));
    }
    out
}

fn reply(cmd: &CommandEnvelope, outcome: ReplyOutcome) -> Incoming {
    incoming(serde_json::to_vec(&ReplyEnvelope::answering(cmd, outcome)).unwrap())
}

fn incoming(payload: Vec<u8>) -> Incoming {
    Incoming {
        payload,
        span: tracing::Span::none(),
    }
}

async fn status(db: &DatabaseConnection, order_no: &str) -> String {
    db.query_one(Statement::from_string(
        db.get_database_backend(),
        format!("SELECT status FROM orders WHERE order_no = '{order_no}'"),
    ))
    .await
    .unwrap()
    .expect("the order")
    .try_get("", "status")
    .unwrap()
}

/// What the batch left: the events announced per order, the replies the
/// inbox recorded, the history rows.
async fn traces(db: &DatabaseConnection, topics: &Topics) -> (i64, i64, i64) {
    (
        scalar_i64(
            db,
            &format!(
                "SELECT count(*) FROM outbox WHERE topic = '{}'",
                topics.orders_events
            ),
        )
        .await,
        scalar_i64(
            db,
            "SELECT count(*) FROM inbox WHERE consumer = 'saga-replies'",
        )
        .await,
        scalar_i64(db, "SELECT count(*) FROM saga_events").await,
    )
}

#[tokio::test]
async fn a_batch_of_replies_settles_each_saga_once_and_again_changes_nothing() {
    let db = fresh_database().await;
    let cfg = common::worker_config("replies-test", "replies-test.");
    let topics = cfg.topics.clone();
    let placed = orders(&db.conn, &topics, &[1, 2, 3]).await;
    let (a, b, c) = (&placed[0], &placed[1], &placed[2]);
    let mut stray = a.1.clone();
    stray.saga_id = Uuid::new_v4();
    stray.message_id = Uuid::new_v4();
    let batch = || {
        vec![
            reply(&a.1, ReplyOutcome::Ok),
            reply(&b.1, ReplyOutcome::Ok),
            // A redelivered copy, in the same batch.
            reply(&a.1, ReplyOutcome::Ok),
            // A reply to a saga that does not exist, and a message that
            // is not a reply at all.
            reply(&stray, ReplyOutcome::Ok),
            incoming(b"{\"not\": \"a reply\"}".to_vec()),
            reply(
                &c.1,
                ReplyOutcome::Rejected {
                    reason: "insufficient funds".to_owned(),
                },
            ),
        ]
    };

    let handled = replies::handle_batch(&mut Session::new(&db.conn), &cfg, batch())
        .await
        .unwrap();
    assert_eq!(handled.len(), 6);
    assert_eq!(
        handled[..3],
        [Handled::Applied, Handled::Applied, Handled::Duplicate]
    );
    assert!(
        matches!(&handled[3], Handled::DeadLetter(r) if r.contains("unknown saga")),
        "{handled:?}"
    );
    assert!(matches!(handled[4], Handled::DeadLetter(_)), "{handled:?}");
    assert_eq!(handled[5], Handled::Applied);
    assert_eq!(status(&db.conn, &a.0).await, "PAID");
    assert_eq!(status(&db.conn, &b.0).await, "PAID");
    assert_eq!(status(&db.conn, &c.0).await, "FAILED");
    let after = traces(&db.conn, &topics).await;
    // One event per order; one inbox row per applied reply, none for the
    // stray or the malformed message (a replay from the dead-letter topic
    // must not be taken for a duplicate).
    assert_eq!((after.0, after.1), (3, 3));
    for (order_no, kind) in [
        (&a.0, "OrderPaid"),
        (&b.0, "OrderPaid"),
        (&c.0, "OrderFailed"),
    ] {
        assert_eq!(
            scalar_i64(
                &db.conn,
                &format!(
                    "SELECT count(*) FROM outbox WHERE topic = '{}' AND key = '{order_no}' \
                     AND payload->>'type' = '{kind}'",
                    topics.orders_events
                ),
            )
            .await,
            1,
            "{order_no}"
        );
    }

    let again = replies::handle_batch(&mut Session::new(&db.conn), &cfg, batch())
        .await
        .unwrap();
    assert!(
        again[..3].iter().all(|h| *h == Handled::Duplicate),
        "{again:?}"
    );
    assert!(matches!(again[3], Handled::DeadLetter(_)), "{again:?}");
    assert!(matches!(again[4], Handled::DeadLetter(_)), "{again:?}");
    assert_eq!(again[5], Handled::Duplicate);
    assert_eq!(traces(&db.conn, &topics).await, after);
}

#[tokio::test]
async fn a_batch_with_a_refused_order_hook_commits_nothing() {
    let db = fresh_database().await;
    let cfg = common::worker_config("replies-test", "replies-test.");
    let topics = cfg.topics.clone();
    let placed = orders(&db.conn, &topics, &[1, 2]).await;
    let (good, moved) = (&placed[0], &placed[1]);
    // Someone moves an order behind its saga's back: marking it PAID is
    // refused when the batch's hooks are applied, after the good reply's
    // saga was already advanced in the same transaction.
    db.conn
        .execute_unprepared(&format!(
            "UPDATE orders SET status = 'CANCELLED' WHERE order_no = '{}'",
            moved.0
        ))
        .await
        .unwrap();
    let before = traces(&db.conn, &topics).await;

    let err = replies::handle_batch(
        &mut Session::new(&db.conn),
        &cfg,
        vec![
            reply(&good.1, ReplyOutcome::Ok),
            reply(&moved.1, ReplyOutcome::Ok),
        ],
    )
    .await
    .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains(&moved.0), "{err}");
    assert_eq!(status(&db.conn, &good.0).await, "PENDING");
    assert_eq!(traces(&db.conn, &topics).await, before);
    assert_eq!(
        scalar_i64(
            &db.conn,
            "SELECT count(*) FROM saga_instances WHERE state = 'WAITING'"
        )
        .await,
        2
    );

    // Alone, the good reply goes through (the consume loop's fallback).
    let alone = replies::handle_batch(
        &mut Session::new(&db.conn),
        &cfg,
        vec![reply(&good.1, ReplyOutcome::Ok)],
    )
    .await
    .unwrap();
    assert_eq!(alone, [Handled::Applied]);
    assert_eq!(status(&db.conn, &good.0).await, "PAID");
}
