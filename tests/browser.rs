//! The operator dashboard in a real browser: headless Debian Chromium,
//! driven through chromedriver by fantoccini, against a whole sagaflow
//! process on the real PostgreSQL and Kafka.
//!
//! An operator finds a FAILED saga (a compensation that gave up) through
//! the list's filters and, its step being fine after all, retries it
//! forward to COMPLETED; retries another one's compensation to
//! COMPENSATED; then cancels an order whose debit is still out. A second
//! scenario works off the "Needs attention" tab: FAILED sagas oldest first,
//! one marked resolved through the dialog, the rest resolved in bulk
//! (counted first, a stale count refused), and the queue-health report.
//! `scripts/test.sh` installs `chromium` and `chromium-driver`.
//! Screenshots go to `target/test-artifacts/`. Conditions are awaited with deadlines, never
//! slept on.

mod common;

use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{money_anomalies, TestApp, ADMIN_TOKEN};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use sagaflow::app::Roles;
use sagaflow_workflows::machine::Outcome;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any one condition may take to come true.
const WITHIN: Duration = Duration::from_secs(30);
/// How often a condition is looked at.
const POLL: Duration = Duration::from_millis(100);

/// Where screenshots (and chromedriver's log) go.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// A chromedriver of this test's own, in its own process group so that the
/// Chromium it starts goes with it: dropping the guard (also while
/// unwinding from a failed assertion) kills the group and removes the
/// browser profile.
struct Chromedriver {
    child: Child,
    url: String,
    profile: PathBuf,
}

impl Chromedriver {
    fn spawn() -> Chromedriver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: scripts/test.sh installs Debian's chromium and chromium-driver \
                 (apt-get install chromium chromium-driver)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let profile = std::env::temp_dir().join(format!(
            "sagaflow-chromium-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&profile).expect("browser profile dir");
        let log = artifacts().join("chromedriver.log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile,
        }
    }

    /// Waits until chromedriver answers `/status` as ready.
    async fn ready(&mut self) {
        let http = reqwest::Client::new();
        let until = tokio::time::Instant::now() + WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().expect("chromedriver status") {
                panic!("chromedriver exited at start-up: {status}");
            }
            if let Ok(r) = http.get(format!("{}/status", self.url)).send().await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["value"]["ready"] == true {
                        return;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < until,
                "chromedriver did not answer within {WITHIN:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A headless Chromium session (offline-safe flags: without the
    /// background-networking ones Chromium hangs on a machine without
    /// internet).
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session from chromedriver")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (process_group(0)).
        let group = format!("-{}", self.child.id());
        Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok();
        self.child.kill().ok();
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.profile).ok();
    }
}

// ------------------------------------------------------------------ saga

/// A saga of the test's own: step 0 takes a hold (its compensation,
/// releasing it, fails while `release_works` is false, and is tried only
/// once, so the saga ends FAILED); step 1 refuses when the data says so
/// while the check service is broken.
fn drill() -> sagaflow_workflows::SagaDefinition {
    use sagaflow_workflows::{Action, Compensation, Hooks, RetryPolicy, SagaDefinition, StepDef};
    let once = RetryPolicy::once();
    SagaDefinition {
        name: "drill",
        version: 1,
        steps: vec![
            StepDef {
                name: "drill.hold",
                action: Action::Local("drill.hold"),
                compensation: Some(Compensation {
                    action: Action::Local("drill.release"),
                    retry: once,
                    timeout: Duration::from_secs(5),
                }),
                retry: once,
                timeout: Duration::from_secs(5),
            },
            StepDef {
                name: "drill.check",
                action: Action::Local("drill.check"),
                compensation: None,
                retry: once,
                timeout: Duration::from_secs(5),
            },
        ],
        hooks: Hooks::default(),
    }
}

/// The drill's local actions.
enum Drill {
    Hold,
    /// Fails while the flag is false.
    Release(Arc<AtomicBool>),
    /// Refuses when the saga's data has `"refuse": true`, while the flag
    /// (the check service is broken) is true.
    Check(Arc<AtomicBool>),
}

impl sagaflow_worker::LocalAction for Drill {
    fn run<'a>(
        &'a self,
        ctx: sagaflow_worker::LocalContext<'a>,
    ) -> sagaflow_worker::ActionFuture<'a> {
        let outcome = match self {
            Drill::Hold => Outcome::Ok,
            Drill::Release(works) if works.load(Ordering::SeqCst) => Outcome::Ok,
            Drill::Release(_) => Outcome::Failed {
                reason: "the hold service is down".to_owned(),
            },
            Drill::Check(broken)
                if broken.load(Ordering::SeqCst) && ctx.saga.data["refuse"] == true =>
            {
                Outcome::Rejected {
                    reason: "the check refused".to_owned(),
                }
            }
            Drill::Check(_) => Outcome::Ok,
        };
        Box::pin(async move { Ok(outcome) })
    }
}

async fn start_drill(app: &TestApp, order_no: &str, refuse: bool) -> String {
    use sea_orm::TransactionTrait;
    let id = uuid::Uuid::now_v7();
    // In one transaction, as an application would: no worker sees the saga
    // before its CREATED row.
    let tx = app.db.conn.begin().await.expect("begin");
    sagaflow_entity::saga_instance::insert_new(
        &tx,
        id,
        ("drill", 1),
        serde_json::json!({ "order_no": order_no, "refuse": refuse }),
        serde_json::json!({}),
        "test",
    )
    .await
    .expect("insert a drill saga");
    tx.commit().await.expect("commit");
    id.to_string()
}

// ------------------------------------------------------------- browsing

fn css(selector: &str) -> Locator<'_> {
    Locator::Css(selector)
}

/// Outbox messages Kafka refused show up under queue health with their
/// size and Kafka's answer; one's Requeue button puts it back in the
/// outbox, the topic's button the rest, the relay publishes them, and the
/// list goes away.
async fn requeue_set_aside_messages(app: &TestApp, b: &Client) {
    use sea_orm::ConnectionTrait;
    let events = app.topic("orders.events");
    app.db
        .conn
        .execute(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO outbox_dead (id, message_id, topic, key, payload, headers, created_at, error) \
             SELECT id, gen_random_uuid(), $1, 'drill', '{\"drill\": true}'::jsonb, '{}'::jsonb, now(), \
                    'MessageSizeTooLarge (limit since raised)' \
               FROM unnest(ARRAY[900001, 900002, 900003]::bigint[]) id",
            [events.clone().into()],
        ))
        .await
        .unwrap();
    click(b, "#qh-refresh").await;
    let row = displayed(b, "#qh-set-aside tr[data-id=\"900001\"]").await;
    let text = row.text().await.unwrap();
    assert!(
        text.contains("MessageSizeTooLarge") && text.contains("orders.events"),
        "{text}"
    );
    screenshot(b, "dashboard-set-aside.png").await;

    click(b, "[data-testid=\"qh-requeue-900001\"]").await;
    text_contains(b, "#notice", "message 900001) back in the outbox").await;
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM outbox_dead WHERE id = 900001")
            .await,
        0
    );
    gone(b, "#qh-set-aside tr[data-id=\"900001\"]").await;
    let topic = displayed(b, "[data-testid=\"qh-requeue-topic\"]").await;
    assert_eq!(
        topic.attr("data-topic").await.unwrap().as_deref(),
        Some(events.as_str())
    );
    topic.click().await.unwrap();
    text_contains(b, "#notice", "2 outbox messages").await;
    assert_eq!(app.scalar_i64("SELECT count(*) FROM outbox_dead").await, 0);
    app.await_scalar(
        &format!("SELECT count(*) FROM outbox WHERE topic = '{events}'"),
        WITHIN,
        |n| n == 0,
    )
    .await;
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM outbox_dead").await,
        0,
        "Kafka took the requeued messages"
    );
    gone(b, "#qh-set-aside-list").await;
}

/// Waits until `selector` is no longer on the page.
async fn gone(b: &Client, selector: &str) {
    let until = tokio::time::Instant::now() + WITHIN;
    while b.find(css(selector)).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < until,
            "`{selector}` is still on the page; page error: {:?}",
            page_error(b).await
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The text of `selector`, if it is on the page.
async fn text_of(b: &Client, selector: &str) -> Option<String> {
    b.find(css(selector)).await.ok()?.text().await.ok()
}

/// What the page says in its error banner (for failure messages).
async fn page_error(b: &Client) -> String {
    text_of(b, "#error").await.unwrap_or_default()
}

/// Waits until `selector` is on the page and displayed.
async fn displayed(b: &Client, selector: &str) -> Element {
    let until = tokio::time::Instant::now() + WITHIN;
    loop {
        if let Ok(e) = b.find(css(selector)).await {
            if e.is_displayed().await.unwrap_or(false) {
                return e;
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "`{selector}` not displayed within {WITHIN:?}; page error: {:?}",
            page_error(b).await
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (up to `within`) until `selector`'s text is `want`.
async fn text_becomes(b: &Client, selector: &str, want: &str, within: Duration) {
    let until = tokio::time::Instant::now() + within;
    loop {
        let now = text_of(b, selector).await;
        if now.as_deref().map(str::trim) == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "`{selector}` shows {now:?}, not {want:?}, after {within:?}; page error: {:?}",
            page_error(b).await
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn click(b: &Client, selector: &str) {
    displayed(b, selector)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("click `{selector}`: {e}"));
}

/// Saves a screenshot of the whole page (the window grows to the page's
/// height for it, then shrinks back).
async fn screenshot(b: &Client, name: &str) {
    let height = b
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .map(|h| h + 150) // the window's own frame
        .unwrap_or(1000)
        .clamp(1000, 4000);
    b.set_window_size(1400, height as u32).await.ok();
    let png = b.screenshot().await.expect("screenshot");
    b.set_window_size(1400, 1000).await.ok();
    std::fs::write(artifacts().join(name), png).expect("write screenshot");
}

/// From the list page: filters by `state` (or any) and `order_no`, and
/// opens the one saga that matches, `saga`.
async fn find_and_open(b: &Client, state: &str, order_no: &str, saga: &str) {
    click(b, "#nav-sagas").await;
    displayed(b, "#filter-state")
        .await
        .select_by_value(state)
        .await
        .expect("choose a state");
    let field = displayed(b, "#filter-order-no").await;
    field.clear().await.expect("clear the order number");
    field
        .send_keys(order_no)
        .await
        .expect("type the order number");
    click(b, "#filter-apply").await;
    let row = format!("tr[data-saga-id=\"{saga}\"]");
    displayed(b, &row).await;
    let rows = b.find_all(css("tr[data-saga-id]")).await.unwrap();
    assert_eq!(rows.len(), 1, "only the saga of {order_no} matches");
    click(b, &row).await;
    displayed(b, "#saga-state").await;
    let url = b.current_url().await.unwrap();
    assert_eq!(url.fragment(), Some(format!("/sagas/{saga}").as_str()));
}

/// Answers the operator dialog: a reason and, when asked, the token.
async fn confirm(b: &Client, reason: &str, token: Option<&str>) {
    let field = displayed(b, "#reason-input").await;
    if field.prop("value").await.unwrap().unwrap_or_default() != reason {
        field.clear().await.unwrap();
        field.send_keys(reason).await.unwrap();
    }
    let token_field = b.find(css("#token-input")).await.unwrap();
    match token {
        Some(t) => {
            assert!(
                token_field.is_displayed().await.unwrap(),
                "the dialog asks for the token"
            );
            token_field.clear().await.unwrap();
            token_field.send_keys(t).await.unwrap();
        }
        None => assert!(
            !token_field.is_displayed().await.unwrap(),
            "the token is kept for the session, not asked again"
        ),
    }
    click(b, "#dialog-ok").await;
}

// ----------------------------------------------------------------- test

const PATIENT_DEBIT: &str = r#"{"order_payment.debit": {"timeout_ms": 120000}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_retries_failed_sagas_and_cancels_a_waiting_order_in_the_dashboard() {
    let release_works = Arc::new(AtomicBool::new(false));
    let check_broken = Arc::new(AtomicBool::new(true));
    let ext = sagaflow::app::Extensions {
        definitions: vec![drill()],
        actions: vec![
            ("drill.hold", Arc::new(Drill::Hold)),
            (
                "drill.release",
                Arc::new(Drill::Release(release_works.clone())),
            ),
            ("drill.check", Arc::new(Drill::Check(check_broken.clone()))),
        ],
    };
    // No funds participant: the order's debit stays unanswered (WAITING)
    // until the test starts one.
    let no_funds = Roles {
        funds: false,
        ..Roles::ALL
    };
    let mut app = TestApp::start_extended(
        &["--saga-tuning", PATIENT_DEBIT, "--poll-interval-ms", "50"],
        no_funds,
        ext,
    )
    .await;

    let app_ref = &mut app;
    let (release_works, check_broken) = (&release_works, &check_broken);
    let run = in_browser("dashboard-failure.png", |b| async move {
        operate(app_ref, &b, release_works, check_broken).await
    })
    .await;
    match run {
        Ok(()) => app.stop().await,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `scenario` in a headless Chromium of its own, then closes it. A
/// panic is caught so that the browser goes away; what the page looked
/// like is saved as `failure_png`, and the panic is handed back for the
/// caller to re-raise once it has cleaned up.
async fn in_browser<F, Fut>(failure_png: &str, scenario: F) -> std::thread::Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut driver = Chromedriver::spawn();
    driver.ready().await;
    let browser = driver.browser().await;
    let run = AssertUnwindSafe(scenario(browser.clone()))
        .catch_unwind()
        .await;
    if run.is_err() {
        if let Ok(png) = browser.screenshot().await {
            std::fs::write(artifacts().join(failure_png), png).ok();
        }
    }
    browser.close().await.ok();
    drop(driver);
    run
}

async fn operate(
    app: &mut TestApp,
    b: &Client,
    release_works: &AtomicBool,
    check_broken: &AtomicBool,
) {
    // a. Two FAILED sagas: their step 1 refuses, and releasing step 0's
    //    hold fails, once, which is all it may. Two more that complete.
    let drill_no = || format!("DRILL-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (stuck_no, undo_no) = (drill_no(), drill_no());
    let stuck = start_drill(app, &stuck_no, true).await;
    let undo = start_drill(app, &undo_no, true).await;
    let fine_a = start_drill(app, "DRILL-fine-a", false).await;
    let fine_b = start_drill(app, "DRILL-fine-b", false).await;
    app.await_saga_state(&stuck, "FAILED", WITHIN).await;
    app.await_saga_state(&undo, "FAILED", WITHIN).await;
    app.await_saga_state(&fine_a, "COMPLETED", WITHIN).await;
    app.await_saga_state(&fine_b, "COMPLETED", WITHIN).await;

    // b. A WAITING order: the debit is out and nobody answers.
    app.funded_account(61, "25.00").await;
    let (status, order) = app.place_order(61, "7.50", None).await;
    assert_eq!(status, 201, "{order}");
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    let waiting = order["saga_id"].as_str().unwrap().to_owned();
    app.await_saga_state(&waiting, "WAITING", WITHIN).await;
    // The debit is on Kafka (the relay deletes what it sent), so the
    // participant sees it before the refund a cancel sends.
    app.await_scalar("SELECT count(*) FROM outbox", WITHIN, |n| n == 0)
        .await;

    // c. The overview shows it at a glance.
    b.goto(&format!("{}/#/", app.base)).await.unwrap();
    text_becomes(b, "#count-FAILED", "2", WITHIN).await;
    text_becomes(b, "#count-WAITING", "1", WITHIN).await;
    text_becomes(b, "#count-COMPLETED", "2", WITHIN).await;
    displayed(b, "#chart-last-hour").await;
    displayed(b, "#attention-failed").await;
    screenshot(b, "dashboard-overview.png").await;

    // The list, filtered, leads to the saga.
    find_and_open(b, "FAILED", &stuck_no, &stuck).await;
    text_becomes(b, "#saga-state", "FAILED", WITHIN).await;
    assert!(
        text_of(b, "#saga-last-error")
            .await
            .unwrap_or_default()
            .contains("the hold service is down"),
        "the page shows why"
    );
    assert!(
        !displayed(b, "#btn-cancel")
            .await
            .is_enabled()
            .await
            .unwrap(),
        "a FAILED saga cannot be cancelled"
    );

    // The check service was wrong and is fixed: the operator retries the
    // saga forward. A wrong token is refused and asked for again, the
    // reason and the choice kept.
    check_broken.store(false, Ordering::SeqCst);
    let retry_reason = "check service fixed, INC-4711";
    click(b, "#btn-retry").await;
    click(b, "#retry-mode-forward").await;
    confirm(b, retry_reason, Some("not-the-token")).await;
    let refused = displayed(b, "#dialog-error").await.text().await.unwrap();
    assert!(refused.contains("refused"), "{refused}");
    assert!(
        displayed(b, "#retry-mode-forward")
            .await
            .is_selected()
            .await
            .unwrap(),
        "the choice is kept when the token is asked again"
    );
    confirm(b, retry_reason, Some(ADMIN_TOKEN)).await;
    text_becomes(b, "#saga-state", "COMPLETED", WITHIN).await;
    displayed(b, "tr[data-kind=\"FORCED_FORWARD\"]").await;
    screenshot(b, "dashboard-saga.png").await;
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_events WHERE saga_id = '{stuck}' AND kind = 'OPERATOR_REQUEST' \
             AND detail->>'request' = 'FORCE_FORWARD' AND detail->>'reason' = '{retry_reason}'"
        ))
        .await,
        1,
        "the operator's request is in the history"
    );
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_events WHERE saga_id = '{stuck}' AND kind = 'FORCED_FORWARD'"
        ))
        .await,
        1,
        "and the worker applying it"
    );

    // The other one's hold service is fixed: its compensation is retried
    // (the default choice), with the token kept for the session.
    release_works.store(true, Ordering::SeqCst);
    find_and_open(b, "FAILED", &undo_no, &undo).await;
    text_becomes(b, "#saga-state", "FAILED", WITHIN).await;
    click(b, "#btn-retry").await;
    confirm(b, "hold service fixed, INC-4712", None).await;
    text_becomes(b, "#saga-state", "COMPENSATED", WITHIN).await;
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_events WHERE saga_id = '{undo}' AND kind = 'MANUAL_RETRY'"
        ))
        .await,
        1
    );

    // d. The waiting order: cancelled while its debit is out.
    find_and_open(b, "", &order_no, &waiting).await;
    text_becomes(b, "#saga-state", "WAITING", WITHIN).await;
    let cancel_reason = "customer called to cancel";
    click(b, "#btn-cancel").await;
    assert!(
        !b.find(css("#retry-mode"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap(),
        "only a FAILED saga's retry offers a choice"
    );
    confirm(b, cancel_reason, None).await;
    // Applied (compensation under way) before the participant comes back.
    app.await_scalar(
        &format!(
            "SELECT count(*) FROM saga_events WHERE saga_id = '{waiting}' AND kind = 'CANCEL_REQUESTED'"
        ),
        WITHIN,
        |n| n == 1,
    )
    .await;
    app.start_roles(Roles {
        api: false,
        worker: false,
        relay: false,
        funds: true,
        replies: false,
    })
    .await;
    text_becomes(b, "#saga-state", "CANCELLED", WITHIN).await;
    let order = app.settled_order(&order_no, WITHIN).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(
        order["failure_reason"],
        format!("cancelled: {cancel_reason}")
    );
    assert_eq!(
        app.account(61).await["balance"],
        "25.00",
        "the debit was refunded"
    );
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_events WHERE saga_id = '{waiting}' AND kind = 'OPERATOR_REQUEST' \
             AND detail->>'request' = 'CANCEL' AND detail->>'reason' = '{cancel_reason}'"
        ))
        .await,
        1
    );
    assert_eq!(money_anomalies(&app.db.conn).await, Vec::<String>::new());
}

// ------------------------------------------------------ needs attention

/// One debit attempt that nobody answers, then two quick refund attempts
/// that nobody answers either: an order's saga is FAILED within a second
/// or two, its order still PENDING.
const GIVES_UP: &str = r#"{
  "order_payment.debit": {
    "timeout_ms": 300,
    "retry": {"max_attempts": 1, "initial_backoff": 0, "max_backoff": 0},
    "compensation_timeout_ms": 200,
    "compensation_retry": {"max_attempts": 2, "initial_backoff": 20, "max_backoff": 50}
  }
}"#;

/// A row of the attention tab, as the page shows it.
#[derive(Debug, Clone, serde::Deserialize)]
struct AttentionRow {
    id: String,
    order: String,
    step: String,
    error: String,
    waited: String,
}

/// The attention tab's rows, top to bottom (read in one script, so that a
/// refresh cannot tear them).
async fn attention_rows(b: &Client) -> Vec<AttentionRow> {
    let v = b
        .execute(
            "return [...document.querySelectorAll('#attention-rows tr[data-saga-id]')].map(r => ({
               id: r.dataset.sagaId,
               order: r.querySelector('.order-no').textContent.trim(),
               step: r.querySelector('.step-name').firstChild.textContent.trim(),
               error: r.querySelector('.last-error').textContent.trim(),
               waited: r.querySelector('.waited-text').textContent.trim(),
             }));",
            vec![],
        )
        .await
        .expect("read the attention rows");
    serde_json::from_value(v).expect("rows")
}

/// Waits until the attention tab lists exactly `ids`, in that order.
async fn attention_lists(b: &Client, ids: &[&str]) -> Vec<AttentionRow> {
    let until = tokio::time::Instant::now() + WITHIN;
    loop {
        let rows = attention_rows(b).await;
        if rows.iter().map(|r| r.id.as_str()).eq(ids.iter().copied()) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the attention tab lists {:?}, not {ids:?}; page error: {:?}",
            rows.iter().map(|r| &r.id).collect::<Vec<_>>(),
            page_error(b).await
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `selector`'s text contains `want`; returns the text.
async fn text_contains(b: &Client, selector: &str, want: &str) -> String {
    let until = tokio::time::Instant::now() + WITHIN;
    loop {
        let now = text_of(b, selector).await.unwrap_or_default();
        if now.contains(want) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "`{selector}` shows {now:?}, without {want:?}; page error: {:?}",
            page_error(b).await
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn is_enabled(b: &Client, selector: &str) -> bool {
    displayed(b, selector).await.is_enabled().await.unwrap()
}

async fn type_into(b: &Client, selector: &str, text: &str) {
    let field = displayed(b, selector).await;
    field.clear().await.unwrap();
    if !text.is_empty() {
        field.send_keys(text).await.unwrap();
    }
}

/// The background colour of a `state` badge on this page.
async fn badge_colour(b: &Client, state: &str) -> String {
    b.execute(
        "const s = document.body.appendChild(document.createElement('span'));
         s.className = 'badge state-' + arguments[0];
         const c = getComputedStyle(s).backgroundColor;
         s.remove();
         return c;",
        vec![serde_json::json!(state)],
    )
    .await
    .expect("a badge's colour")
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// Places an order of 5.00 for user 71 (whose debit nobody answers).
/// Waits for `saga` to be RESOLVED with `resolution`, its order FAILED,
/// and its history naming alice and `reason`.
async fn assert_resolved(
    app: &TestApp,
    saga: &str,
    order_no: &str,
    resolution: &str,
    reason: &str,
) {
    app.await_saga_state(saga, "RESOLVED", WITHIN).await;
    assert_eq!(
        app.settled_order(order_no, WITHIN).await["status"],
        "FAILED"
    );
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_instances WHERE id = '{saga}' AND resolution = '{resolution}'"
        ))
        .await,
        1
    );
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM saga_events WHERE saga_id = '{saga}' AND kind = 'OPERATOR_REQUEST' \
             AND actor = 'alice' AND detail->>'reason' = '{reason}'"
        ))
        .await,
        1,
        "the history names who resolved it and why"
    );
}

async fn doomed_order(app: &TestApp) -> (String, String) {
    let (status, order) = app.place_order(71, "5.00", None).await;
    assert_eq!(status, 201, "{order}");
    (
        order["order_no"].as_str().unwrap().to_owned(),
        order["saga_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_works_off_the_needs_attention_queue_in_the_dashboard() {
    // The drill's hold can never be released and its check always refuses
    // a saga that asks for it: such a drill ends FAILED.
    let ext = sagaflow::app::Extensions {
        definitions: vec![drill()],
        actions: vec![
            ("drill.hold", Arc::new(Drill::Hold)),
            (
                "drill.release",
                Arc::new(Drill::Release(Arc::new(AtomicBool::new(false)))),
            ),
            (
                "drill.check",
                Arc::new(Drill::Check(Arc::new(AtomicBool::new(true)))),
            ),
        ],
    };
    // No funds participant: every order's debit and refunds go unanswered.
    let no_funds = Roles {
        funds: false,
        ..Roles::ALL
    };
    let app = TestApp::start_extended(
        &["--saga-tuning", GIVES_UP, "--poll-interval-ms", "50"],
        no_funds,
        ext,
    )
    .await;

    let app_ref = &app;
    let run = in_browser("dashboard-attention-failure.png", |b| async move {
        work_off_the_queue(app_ref, &b).await
    })
    .await;
    match run {
        Ok(()) => app.stop().await,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn work_off_the_queue(app: &TestApp, b: &Client) {
    // a. Four FAILED sagas, created in this order: a drill (its hold's
    //    release fails), then three orders whose refunds go unanswered.
    let drill_saga = start_drill(app, "DRILL-attention", true).await;
    app.funded_account(71, "50.00").await;
    let (order_a, saga_a) = doomed_order(app).await;
    let (order_b, saga_b) = doomed_order(app).await;
    let (order_c, saga_c) = doomed_order(app).await;
    for saga in [&drill_saga, &saga_a, &saga_b, &saga_c] {
        app.await_saga_state(saga, "FAILED", WITHIN).await;
    }

    // b. The tab lists them oldest first, with the failing step, the last
    //    error and how long each has waited.
    b.goto(&format!("{}/#/", app.base)).await.unwrap();
    text_becomes(b, "#nav-attention-count", "4", WITHIN).await;
    click(b, "#nav-attention").await;
    displayed(b, "#attention").await;
    assert_eq!(
        b.current_url().await.unwrap().fragment(),
        Some("/attention")
    );
    let rows = attention_lists(b, &[&drill_saga, &saga_a, &saga_b, &saga_c]).await;
    assert_eq!(rows[0].step, "drill.hold", "{rows:?}");
    assert!(
        rows[0].error.contains("the hold service is down"),
        "{rows:?}"
    );
    for (row, order_no) in rows[1..].iter().zip([&order_a, &order_b, &order_c]) {
        assert_eq!(&row.order, order_no, "{rows:?}");
        assert_eq!(row.step, "debit", "{rows:?}");
        assert!(row.error.contains("compensation timed out"), "{rows:?}");
    }
    for row in &rows {
        // "7 s", "3 min", "1 h 12 min": a number, then a unit.
        let mut words = row.waited.split(' ');
        let (n, unit) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        assert!(
            n.parse::<u64>().is_ok() && ["s", "min", "h", "d"].contains(&unit),
            "waited: {:?}",
            row.waited
        );
    }
    // Without a token the queue-health report waits to be asked for.
    displayed(b, "#queue-health #qh-show").await;

    // c. Order A was refunded by bank transfer: mark it resolved, settled
    //    outside. The money effect is a choice the operator must make.
    let resolve_a = format!("tr[data-saga-id=\"{saga_a}\"] button[data-action=\"resolve\"]");
    click(b, &resolve_a).await;
    displayed(b, "#resolution").await;
    for radio in [
        "#resolution-none",
        "#resolution-applied",
        "#resolution-settled-outside",
    ] {
        assert!(
            !displayed(b, radio).await.is_selected().await.unwrap(),
            "{radio} is not preselected"
        );
    }
    assert!(
        !b.find(css("#retry-mode"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap(),
        "a resolve offers no retry choice"
    );
    type_into(b, "#actor-input", "alice").await;
    let resolve_reason = "refunded by bank transfer, TICKET-88";
    confirm(b, resolve_reason, Some(ADMIN_TOKEN)).await;
    text_contains(b, "#dialog-error", "money").await;
    screenshot(b, "dashboard-resolve-dialog.png").await;
    click(b, "#resolution-settled-outside").await;
    click(b, "#dialog-ok").await;
    assert_resolved(app, &saga_a, &order_a, "SETTLED_OUTSIDE", resolve_reason).await;
    attention_lists(b, &[&drill_saga, &saga_b, &saga_c]).await;
    text_becomes(b, "#nav-attention-count", "3", WITHIN).await;

    // d. The token is kept now: the queue-health report shows itself, with
    //    the oldest open transaction and the four tables.
    let oldest = displayed(b, "#qh-oldest-xact").await.text().await.unwrap();
    assert!(!oldest.trim().is_empty(), "the oldest transaction's figure");
    for table in ["saga_instances", "saga_events", "outbox", "inbox"] {
        let row = displayed(b, &format!("#qh-tables tr[data-table=\"{table}\"]")).await;
        let text = row.text().await.unwrap();
        assert!(text.contains(table) && text.contains('%'), "{text}");
    }
    displayed(b, "#qh-outbox").await;
    displayed(b, "#qh-inbox").await;
    requeue_set_aside_messages(app, b).await;

    // e. The other two orders: one bulk resolve, counted first. The name
    //    given in the dialog is remembered.
    assert_eq!(
        displayed(b, "#bulk-actor")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("alice")
    );
    assert!(
        !is_enabled(b, "#bulk-apply").await,
        "no Apply before a count"
    );
    type_into(b, "#bulk-type", "order_payment").await;
    displayed(b, "#bulk-action")
        .await
        .select_by_value("RESOLVE")
        .await
        .unwrap();
    displayed(b, "#bulk-resolution")
        .await
        .select_by_value("NONE")
        .await
        .unwrap();
    let bulk_reason = "participant outage: no debit happened";
    type_into(b, "#bulk-reason", bulk_reason).await;
    click(b, "#bulk-count").await;
    text_becomes(b, "#bulk-result", "2 sagas match, 2 applicable.", WITHIN).await;
    assert!(is_enabled(b, "#bulk-apply").await);
    text_becomes(b, "#bulk-apply", "Apply to 2 sagas", WITHIN).await;
    screenshot(b, "dashboard-attention.png").await;

    // Changing the filter takes the count back.
    type_into(b, "#bulk-error", "timed out").await;
    assert!(
        !is_enabled(b, "#bulk-apply").await,
        "a changed filter needs a new count"
    );
    click(b, "#bulk-count").await;
    text_becomes(b, "#bulk-result", "2 sagas match, 2 applicable.", WITHIN).await;

    // Another order fails meanwhile: the confirmed count is stale, and
    // nothing is done.
    let (order_d, saga_d) = doomed_order(app).await;
    app.await_saga_state(&saga_d, "FAILED", WITHIN).await;
    // Its row joins the list above the form, pushing the form down; a
    // click aimed before that lands where the button was (a fresh-clone
    // run once put the Count click into the error filter's box).
    attention_lists(b, &[&drill_saga, &saga_b, &saga_c, &saga_d]).await;
    click(b, "#bulk-apply").await;
    text_contains(b, "#bulk-result", "Not applied").await;
    let stale = text_of(b, "#bulk-result").await.unwrap();
    assert!(stale.contains("matches 3"), "{stale}");
    assert!(!is_enabled(b, "#bulk-apply").await, "{stale}");
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM saga_instances WHERE operator_request IS NOT NULL")
            .await,
        0,
        "a stale count files nothing"
    );

    click(b, "#bulk-count").await;
    text_becomes(b, "#bulk-result", "3 sagas match, 3 applicable.", WITHIN).await;
    click(b, "#bulk-apply").await;
    text_contains(b, "#bulk-result", "filed on 3 sagas").await;
    for (saga, order_no) in [
        (&saga_b, &order_b),
        (&saga_c, &order_c),
        (&saga_d, &order_d),
    ] {
        assert_resolved(app, saga, order_no, "NONE", bulk_reason).await;
    }
    // Only the drill is left; the other type was not matched.
    attention_lists(b, &[&drill_saga]).await;
    text_becomes(b, "#nav-attention-count", "1", WITHIN).await;

    // f. RESOLVED has its own badge, tile and filter.
    click(b, "#nav-overview").await;
    text_becomes(b, "#count-RESOLVED", "4", WITHIN).await;
    find_and_open(b, "RESOLVED", &order_a, &saga_a).await;
    text_becomes(b, "#saga-state", "RESOLVED", WITHIN).await;
    text_contains(b, "#saga-resolution", "SETTLED_OUTSIDE").await;
    let resolved = badge_colour(b, "RESOLVED").await;
    for other in ["COMPENSATED", "COMPLETED", "FAILED", "CANCELLED"] {
        assert_ne!(
            resolved,
            badge_colour(b, other).await,
            "RESOLVED looks like {other}"
        );
    }

    // Verify holds each resolve to its assertion: B, C and D moved no
    // money (NONE holds); A was asserted settled outside, but its debit
    // never happened, so verify names A, and only A.
    let anomalies = money_anomalies(&app.db.conn).await;
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
    assert!(
        anomalies[0].starts_with("a RESOLVED saga") && anomalies[0].contains(&saga_a),
        "{anomalies:?}"
    );
}
