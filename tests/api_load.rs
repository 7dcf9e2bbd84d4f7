//! A bounded loopback load on a real socket: 2,000 requests, 200 at a
//! time, a mix of reads, orders, bad input and operator calls. Nothing may
//! fail at the transport level and nothing may answer 5xx; afterwards the
//! books balance. (A correctness check under concurrency, not a benchmark.)

mod common;

use futures::stream::{self, StreamExt};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_concurrent_requests_get_no_5xx() {
    let app = common::TestApp::start().await;
    for user in 1..=10 {
        app.funded_account(user, "100.00").await;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(200)
        .build()
        .unwrap();
    let base = app.base.clone();
    let results: Vec<(usize, Result<u16, String>)> = stream::iter(0..2_000usize)
        .map(|n| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let user = 1 + (n % 10) as i64;
                let req = match n % 8 {
                    0 | 1 => http
                        .post(format!("{base}/orders"))
                        .json(&json!({ "user_id": user, "amount": "1.00" })),
                    2 => http.get(format!("{base}/accounts/{user}")),
                    3 => http.get(format!("{base}/sagas?limit=20")),
                    4 => http.get(format!("{base}/sagas/stats")),
                    // Bad input: must be a 4xx, never a 5xx.
                    5 => http
                        .post(format!("{base}/orders"))
                        .json(&json!({ "user_id": user, "amount": "-1" })),
                    6 => http
                        .post(format!("{base}/sagas/{}/cancel", uuid::Uuid::new_v4()))
                        .bearer_auth(common::ADMIN_TOKEN)
                        .json(&json!({ "reason": "load" })),
                    _ => http.get(format!("{base}/orders/ORD-nope-{n}")),
                };
                let status = req
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string());
                (n, status)
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;

    let failures: Vec<_> = results
        .iter()
        .filter(|(_, r)| !matches!(r, Ok(s) if *s < 500))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let created = results
        .iter()
        .filter(|(n, r)| n % 8 < 2 && matches!(r, Ok(201)))
        .count();
    assert_eq!(created, 500, "every valid order is placed");
    let bad = results
        .iter()
        .filter(|(n, r)| n % 8 == 5 && matches!(r, Ok(422)))
        .count();
    assert_eq!(bad, 250, "every bad order is a 422");

    // The 500 orders of 1.00 settle against 1,000.00 in all: all PAID.
    app.await_scalar(
        "SELECT count(*) FROM orders WHERE status = 'PAID'",
        std::time::Duration::from_secs(60),
        |n| n == 500,
    )
    .await;
    assert_eq!(
        common::money_anomalies(&app.db.conn).await,
        Vec::<String>::new()
    );
    app.stop().await;
}
