//! The funds participant's batches, on a real Postgres: a batch of
//! commands spread over accounts, with several on one account, a redelivered
//! copy and a malformed message, ends exactly as the same commands applied
//! one at a time do: the same answers, the same balances, the same ledger.

mod common;

use common::fresh_database;
use rust_decimal::Decimal;
use sagaflow_worker::consumer::{Handled, Incoming};
use sagaflow_worker::participant;
use sagaflow_worker::session::Session;
use sagaflow_workflows::messages::{CommandEnvelope, CommandKind, Topics};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use uuid::Uuid;

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute_unprepared(sql).await.expect(sql);
}

/// An account holding `balance`, with the deposit that put it there.
async fn account(db: &DatabaseConnection, user_id: i64, balance: &str) {
    exec(
        db,
        &format!(
            "INSERT INTO accounts (user_id, balance) VALUES ({user_id}, {balance}); \
             INSERT INTO ledger_entries (user_id, saga_id, kind, amount, balance_after) \
             VALUES ({user_id}, NULL, 'DEPOSIT', {balance}, {balance})"
        ),
    )
    .await;
}

fn debit(saga_id: Uuid, user_id: i64, amount: &str) -> CommandEnvelope {
    CommandEnvelope {
        message_id: CommandEnvelope::message_id_for(saga_id, 0, false),
        kind: CommandKind::FundsDebit,
        saga_id,
        epoch: 0,
        step: 0,
        attempt: 1,
        compensation: false,
        user_id,
        amount: amount.parse().unwrap(),
    }
}

fn incoming(payload: Vec<u8>) -> Incoming {
    Incoming {
        payload,
        span: tracing::Span::none(),
    }
}

/// The answer each saga got, from the replies in the outbox, in the order
/// of `sagas`.
async fn answers(db: &DatabaseConnection, sagas: &[Uuid]) -> Vec<String> {
    let mut out = Vec::new();
    for saga in sagas {
        let rows = db
            .query_all(Statement::from_string(
                db.get_database_backend(),
                format!(
                    "SELECT concat_ws(': ', payload->>'outcome', payload->>'reason') AS outcome \
                     FROM outbox WHERE key = '{saga}' ORDER BY id"
                ),
            ))
            .await
            .unwrap();
        let outcomes: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String>("", "outcome").unwrap())
            .collect();
        out.push(outcomes.join(" | "));
    }
    out
}

/// Balance, and deposits − debits from the ledger, of `user_id`.
async fn books(db: &DatabaseConnection, user_id: i64) -> (Decimal, Decimal) {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT (SELECT balance FROM accounts WHERE user_id = {user_id}) AS balance, \
                        (SELECT sum(CASE kind WHEN 'DEBIT' THEN -amount ELSE amount END) \
                         FROM ledger_entries WHERE user_id = {user_id}) AS ledger"
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    (
        row.try_get("", "balance").unwrap(),
        row.try_get("", "ledger").unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_several_accounts_settles_as_its_commands_one_by_one() {
    let db = fresh_database().await;
    let topics = Topics::with_prefix("participant-test.");
    // The same commands twice: in one batch on accounts 1 and 2, one by
    // one on accounts 3 and 4. Account 1 (3) covers two of its three
    // debits, account 2 (4) one of its two.
    for (a, b) in [(1, 2), (3, 4)] {
        account(&db.conn, a, "10.00").await;
        account(&db.conn, b, "5.00").await;
    }
    let plan = |a: i64, b: i64| {
        vec![
            debit(Uuid::new_v4(), a, "4.00"),
            debit(Uuid::new_v4(), b, "3.00"),
            debit(Uuid::new_v4(), a, "4.00"),
            debit(Uuid::new_v4(), a, "4.00"),
            debit(Uuid::new_v4(), b, "3.00"),
        ]
    };
    let (batched, single) = (plan(1, 2), plan(3, 4));
    let payloads = |cmds: &[CommandEnvelope]| -> Vec<Vec<u8>> {
        cmds.iter()
            .map(|c| serde_json::to_vec(c).unwrap())
            .collect()
    };

    let mut batch: Vec<Incoming> = payloads(&batched).into_iter().map(incoming).collect();
    // A redelivered copy of the first command, and a message that is not
    // a command at all.
    batch.push(incoming(payloads(&batched)[0].clone()));
    batch.push(incoming(b"{\"not\": \"a command\"}".to_vec()));
    let handled = participant::handle_batch(&mut Session::new(&db.conn), &topics, batch)
        .await
        .unwrap();
    assert_eq!(handled.len(), 7);
    assert!(
        handled[..5].iter().all(|h| *h == Handled::Applied),
        "{handled:?}"
    );
    assert_eq!(handled[5], Handled::Duplicate);
    assert!(matches!(handled[6], Handled::DeadLetter(_)), "{handled:?}");

    for payload in payloads(&single) {
        let h = participant::handle(&mut Session::new(&db.conn), &topics, &payload)
            .await
            .unwrap();
        assert_eq!(h, Handled::Applied);
    }

    let ids = |cmds: &[CommandEnvelope]| cmds.iter().map(|c| c.saga_id).collect::<Vec<_>>();
    let batch_answers = answers(&db.conn, &ids(&batched)).await;
    assert_eq!(batch_answers, answers(&db.conn, &ids(&single)).await);
    assert_eq!(
        batch_answers,
        [
            "OK",
            "OK",
            "OK",
            "REJECTED: insufficient funds: balance 2.00, amount 4.00",
            "REJECTED: insufficient funds: balance 2.00, amount 3.00",
        ]
    );
    for user_id in 1..=4 {
        let (balance, ledger) = books(&db.conn, user_id).await;
        assert_eq!(
            balance, ledger,
            "account {user_id}'s balance and ledger differ"
        );
        assert_eq!(
            balance,
            "2.00".parse::<Decimal>().unwrap(),
            "account {user_id}"
        );
    }
    assert_eq!(
        common::scalar_i64(
            &db.conn,
            "SELECT count(*) FROM ledger_entries WHERE kind = 'DEBIT'"
        )
        .await,
        6
    );
}
