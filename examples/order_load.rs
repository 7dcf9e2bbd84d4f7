//! A quick load against a running `sagaflow serve`: places orders over many
//! accounts through the HTTP API, waits until none is PENDING, and reports
//! throughput and order-to-PAID latency from the database's own timestamps
//! (`orders.created_at` → `orders.updated_at`). A smoke measurement, not
//! the benchmark harness.
//!
//! ```text
//! cargo run --release --example order_load -- [orders] [concurrency] [accounts]
//! ```
//! Uses `SAGAFLOW_URL` (default `http://127.0.0.1:8080`) and `DATABASE_URL`.

// The report on stdout is this program's whole output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use sea_orm::{ConnectionTrait, Database, Statement};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let orders = args.first().copied().unwrap_or(1_000);
    let concurrency = args.get(1).copied().unwrap_or(32);
    let accounts = args.get(2).copied().unwrap_or(100).max(1);
    let base = std::env::var("SAGAFLOW_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned());
    let db_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://sagaflow:sagaflow@127.0.0.1:55432/sagaflow".to_owned());
    let http = reqwest::Client::new();
    let db = Database::connect(&db_url).await.context("DATABASE_URL")?;

    // Fresh user ids for this run, so that runs do not disturb each other.
    let first_user = chrono::Utc::now().timestamp_millis() * 1_000;
    for u in 0..accounts {
        let user_id = first_user + i64::try_from(u)?;
        http.post(format!("{base}/accounts"))
            .json(&serde_json::json!({ "user_id": user_id }))
            .send()
            .await?
            .error_for_status()?;
        http.post(format!("{base}/accounts/{user_id}/deposits"))
            .json(&serde_json::json!({ "amount": "1000000.00" }))
            .send()
            .await?
            .error_for_status()?;
    }

    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(usize::try_from(concurrency)?));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..orders {
        let permit = sem.clone().acquire_owned().await?;
        let http = http.clone();
        let url = format!("{base}/orders");
        let user_id = first_user + i64::try_from(n % accounts)?;
        tasks.spawn(async move {
            let r = http
                .post(url)
                .json(&serde_json::json!({ "user_id": user_id, "amount": "1.00" }))
                .send()
                .await;
            drop(permit);
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        });
    }
    let mut accepted = 0u64;
    while let Some(s) = tasks.join_next().await {
        if s? == 201 {
            accepted += 1;
        }
    }
    let placing = started.elapsed();

    let user_range = format!(
        "user_id BETWEEN {first_user} AND {}",
        first_user + i64::try_from(accounts)? - 1
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pending = scalar(
            &db,
            &format!("SELECT count(*) FROM orders WHERE {user_range} AND status = 'PENDING'"),
        )
        .await?;
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT (EXTRACT(EPOCH FROM (updated_at - created_at)) * 1000000)::bigint AS us, \
                        (EXTRACT(EPOCH FROM (max(updated_at) OVER () - min(created_at) OVER ())) * 1000)::bigint AS span_ms \
                 FROM orders WHERE {user_range} AND status = 'PAID'"
            ),
        ))
        .await?;
    let mut hist = Histogram::<u64>::new(3)?;
    let mut span_ms = 0i64;
    for r in &rows {
        let us: i64 = r.try_get("", "us")?;
        span_ms = r.try_get("", "span_ms")?;
        hist.record(u64::try_from(us.max(0))?)?;
    }
    let paid = u64::try_from(rows.len())?;
    let ms = |q: f64| hist.value_at_quantile(q) / 1000;
    println!("orders placed:        {orders} ({accepted} accepted, concurrency {concurrency}, {accounts} accounts)");
    println!("placing took:         {} ms", placing.as_millis());
    println!("paid:                 {paid}");
    println!("first accepted → last paid: {span_ms} ms");
    if span_ms > 0 {
        println!(
            "throughput:           {} orders/s",
            paid * 1000 / u64::try_from(span_ms)?
        );
    }
    println!(
        "order → PAID latency: p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
        ms(0.50),
        ms(0.95),
        ms(0.99),
        hist.max() / 1000
    );
    Ok(())
}

async fn scalar(db: &sea_orm::DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await?
        .context("no row")?;
    Ok(row.try_get_by_index(0)?)
}
