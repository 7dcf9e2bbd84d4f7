//! The fault suite: every role as its own OS process (`api`, `relay`, three
//! `worker`s, two `participant funds`) on a PostgreSQL and a Kafka of the
//! suite's own, driven with 2,000 orders over 200 accounts (every fifth
//! one underfunded, so that some orders are refused) while workers and
//! participants are killed with SIGKILL every one to two seconds and
//! replaced, the Kafka broker is stopped and started again, and so is
//! PostgreSQL. Clients keep placing orders through it all, retrying a
//! refused or unanswered POST with the same `Idempotency-Key`.
//!
//! Once the faults stop, every saga must finish within [`SETTLE`], and then
//! the books must balance to the cent: each account's balance is its
//! deposits minus the orders it paid, PAID + FAILED is every order placed,
//! each order exists once, `orders.events` carries each order's outcome,
//! and `sagaflow verify` (run as a process) and [`common::money_anomalies`]
//! find nothing. Processes that were not killed must not have died, and
//! no process may have panicked.
//!
//! The services are not the shared ones the other tests use (restarting
//! those would break them): `scripts/services.sh` runs a second pair with
//! `SAGAFLOW_STATE_DIR=.sagaflow/faults` on ports 55433 (PostgreSQL), 19092
//! and 19093 (Kafka), which this test starts and stops again, however it
//! ends. Two runs of the suite on one machine take turns (a lock port).
//!
//! The figures of the run go to stderr (directly, so that cargo shows them
//! for a passing test too) and to `target/fault-suite/last-run.txt`; the
//! processes' logs to `target/fault-suite/logs/`. `SAGAFLOW_FAULT_SEED=<n>`
//! replays a run's plan (accounts, amounts, which process dies when),
//! `SAGAFLOW_FAULTS=0` runs the same load and checks without the faults
//! (for comparison), and `SAGAFLOW_FAULT_TUNING=<json>` runs the processes
//! with `--saga-tuning <json>` instead of the shipped saga policies.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

/// Orders placed.
const ORDERS: usize = 2_000;
const ORDERS_U32: u32 = ORDERS as u32;
/// Accounts they are spread over.
const ACCOUNTS: i64 = 200;
/// Every n-th account gets [`POOR_DEPOSIT_CENTS`], the others
/// [`RICH_DEPOSIT_CENTS`].
const UNDERFUNDED_EVERY: i64 = 5;
const RICH_DEPOSIT_CENTS: i64 = 40_000;
const POOR_DEPOSIT_CENTS: i64 = 2_500;
/// Order amounts are drawn from this range, in cents.
const AMOUNT_CENTS: (i64, i64) = (100, 3_000);
/// Concurrent HTTP clients.
const CLIENTS: usize = 32;
/// The orders are spread evenly over this window, so that they keep
/// arriving while the faults happen.
const PLACING_WINDOW: Duration = Duration::from_secs(28);
/// The faults start once this many orders have settled.
const WARM: i64 = 20;
/// A client gives up on one POST (and the test fails) after this long.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

/// Processes of each role at any time (a killed one is replaced at once).
const WORKERS: usize = 3;
const PARTICIPANTS: usize = 2;
/// At least this many SIGKILLs, one every [`KILL_EVERY_MS`]; they go on
/// until the Kafka and PostgreSQL restarts are over.
const MIN_KILLS: usize = 10;
const KILL_EVERY_MS: (u64, u64) = (1_000, 2_000);
/// When the broker goes down (after the orders start), and how long after
/// it is back PostgreSQL goes down.
const KAFKA_FAULT_AT: Duration = Duration::from_secs(4);
const PG_FAULT_AFTER_KAFKA: Duration = Duration::from_secs(3);
/// How long each service stays down between its stop and its start (the
/// broker's own shutdown and start-up add a few seconds). PostgreSQL stays
/// down longer than a process waits for a pool connection (10 s), so that
/// POSTs fail with 503 (500 when a connection is cut mid-request) and
/// clients retry them.
const KAFKA_DOWN_FOR: Duration = Duration::from_secs(3);
const PG_DOWN_FOR: Duration = Duration::from_secs(12);
/// The bound: after the last fault, every saga is finished (and the outbox
/// drained) within this.
const SETTLE: Duration = Duration::from_secs(120);

/// The suite's own services.
const PG_PORT: u16 = 55_433;
const KAFKA_PORT: u16 = 19_092;
const KAFKA_CONTROLLER_PORT: u16 = 19_093;
/// Held while the suite runs, so that two runs never share the services.
const LOCK_PORT: u16 = 19_094;
/// The suite's database on its own server (dropped and made again).
const DB_NAME: &str = "fault_suite";

/// A short lease, so that a killed worker's sagas are taken over within
/// seconds (the default is 30 s). The sagas' retry policies and timeouts
/// are the shipped ones; `SAGAFLOW_FAULT_TUNING=<json>` passes other ones
/// as `--saga-tuning`.
const LEASE_MS: &str = "4000";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/fault-suite`.
fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")))
        .join("fault-suite")
}

fn server_url(db: &str) -> String {
    format!("postgres://sagaflow:sagaflow@127.0.0.1:{PG_PORT}/{db}")
}

fn kafka_bootstrap() -> String {
    format!("127.0.0.1:{KAFKA_PORT}")
}

fn cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The run's random plan (accounts, amounts, victims, pauses), seeded so
/// that `SAGAFLOW_FAULT_SEED` replays it.
type Rng = rand::rngs::StdRng;

/// Uniform in `lo..=hi`.
fn between(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    use rand::Rng as _;
    rng.gen_range(lo..=hi)
}

// ---------------------------------------------------------------------------
// The services: scripts/services.sh with the suite's state dir and ports.
// ---------------------------------------------------------------------------

/// The suite's PostgreSQL and Kafka, stopped when dropped.
struct Services {
    log: PathBuf,
}

impl Services {
    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new(repo().join("scripts/services.sh"))
            .args(args)
            .env("SAGAFLOW_STATE_DIR", repo().join(".sagaflow/faults"))
            .env("SAGAFLOW_PG_PORT", PG_PORT.to_string())
            .env("SAGAFLOW_KAFKA_PORT", KAFKA_PORT.to_string())
            .env(
                "SAGAFLOW_KAFKA_CONTROLLER_PORT",
                KAFKA_CONTROLLER_PORT.to_string(),
            )
            .stdin(Stdio::null())
            .output()
            .context("running scripts/services.sh")?;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            f.write_all(&out.stdout).ok();
            f.write_all(&out.stderr).ok();
        }
        ensure!(
            out.status.success(),
            "scripts/services.sh {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Err(e) = self.run(&["stop"]) {
            let _ = writeln!(
                std::io::stderr(),
                "fault suite: stopping its services: {e:#}"
            );
        }
    }
}

/// Waits (up to 10 minutes) until no other run of the suite holds the lock
/// port, then holds it.
async fn suite_lock() -> anyhow::Result<TcpListener> {
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        match TcpListener::bind(("127.0.0.1", LOCK_PORT)) {
            Ok(l) => return Ok(l),
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("another fault-suite run holds 127.0.0.1:{LOCK_PORT}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------
// The sagaflow processes.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Api,
    Relay,
    Worker,
    Participant,
}

impl Role {
    fn args(self) -> &'static [&'static str] {
        match self {
            Role::Api => &["api"],
            Role::Relay => &["relay"],
            Role::Worker => &["worker"],
            Role::Participant => &["participant", "funds"],
        }
    }
    fn name(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Relay => "relay",
            Role::Worker => "worker",
            Role::Participant => "participant",
        }
    }
}

struct Proc {
    role: Role,
    name: String,
    child: Child,
}

/// A process that ended without being killed by the suite.
struct Exit {
    what: String,
    /// It could not start (a service was down) and said so: `main`'s error
    /// before serving anything, as it should. Anything else is a crash.
    failed_to_start: bool,
}

/// Every sagaflow process the suite started, SIGKILLed when dropped.
struct Fleet {
    procs: Vec<Proc>,
    args: Vec<String>,
    logs: PathBuf,
    started: BTreeMap<Role, usize>,
    /// Processes that ended by themselves (each was started again).
    exits: Vec<Exit>,
}

impl Fleet {
    fn spawn(&mut self, role: Role) -> anyhow::Result<()> {
        let n = self.started.entry(role).or_default();
        *n += 1;
        let name = format!("{}-{n}", role.name());
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))?;
        let child = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
            .args(role.args())
            .args(&self.args)
            .env("RUST_LOG", "info,sqlx=warn,sea_orm=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        self.procs.push(Proc { role, name, child });
        Ok(())
    }

    /// SIGKILLs a random worker or participant and starts a new process of
    /// its role in its place; returns the victim's role and name.
    fn kill_one(&mut self, rng: &mut Rng) -> anyhow::Result<(Role, String)> {
        let victims: Vec<usize> = (0..self.procs.len())
            .filter(|&i| matches!(self.procs[i].role, Role::Worker | Role::Participant))
            .collect();
        ensure!(!victims.is_empty(), "no worker or participant to kill");
        let pick = victims[usize::try_from(between(rng, 0, victims.len() as u64 - 1))?];
        let mut victim = self.procs.swap_remove(pick);
        victim.child.kill().context("kill -9")?;
        victim.child.wait().context("reaping a killed process")?;
        self.spawn(victim.role)?;
        Ok((victim.role, victim.name))
    }

    /// Finds the processes that ended without being killed and starts each
    /// one's role again, as an orchestrator would.
    fn respawn_exited(&mut self) -> anyhow::Result<()> {
        let mut i = 0;
        while i < self.procs.len() {
            let Some(status) = self.procs[i].child.try_wait()? else {
                i += 1;
                continue;
            };
            let p = self.procs.swap_remove(i);
            let log = std::fs::read_to_string(self.logs.join(format!("{}.log", p.name)))
                .unwrap_or_default();
            self.exits.push(Exit {
                failed_to_start: log.contains("Error: starting sagaflow"),
                what: format!("{} ({status})", p.name),
            });
            self.spawn(p.role)?;
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.child.kill().ok();
            p.child.wait().ok();
        }
    }
}

/// Starts the API (which migrates the database and creates the topics),
/// waits until it is ready, then the relay, the workers and the
/// participants. Returns them and the API's base URL.
async fn start_fleet(
    db_url: &str,
    prefix: &str,
    logs: &Path,
    http: &reqwest::Client,
) -> anyhow::Result<(Fleet, String)> {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let bootstrap = kafka_bootstrap();
    let mut args: Vec<String> = [
        "--database-url",
        db_url,
        "--kafka-bootstrap-servers",
        &bootstrap,
        "--topic-prefix",
        prefix,
        "--group-prefix",
        prefix,
        "--topic-partitions",
        "6",
        "--kafka-session-timeout-ms",
        "4000",
        "--lease-ms",
        LEASE_MS,
        "--poll-interval-ms",
        "100",
        "--workers",
        "2",
        "--consumers",
        "2",
        "--db-pool-size",
        "12",
        "--admin-token",
        common::ADMIN_TOKEN,
        "--listen",
        &listen,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Ok(tuning) = std::env::var("SAGAFLOW_FAULT_TUNING") {
        args.extend(["--saga-tuning".to_owned(), tuning]);
    }
    let mut fleet = Fleet {
        procs: Vec::new(),
        args,
        logs: logs.to_owned(),
        started: BTreeMap::new(),
        exits: Vec::new(),
    };
    fleet.spawn(Role::Api)?;
    let base = format!("http://{listen}");
    let until = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        ensure!(
            Instant::now() < until,
            "the api never became ready; see {}",
            logs.display()
        );
        fleet.respawn_exited()?;
        ensure!(
            fleet.exits.is_empty(),
            "the api exited; see {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.spawn(Role::Relay)?;
    for _ in 0..WORKERS {
        fleet.spawn(Role::Worker)?;
    }
    for _ in 0..PARTICIPANTS {
        fleet.spawn(Role::Participant)?;
    }
    Ok((fleet, base))
}

// ---------------------------------------------------------------------------
// Set-up of the database and Kafka.
// ---------------------------------------------------------------------------

/// Drops and creates the suite's database on its own server.
async fn fresh_database() -> anyhow::Result<String> {
    let admin = Database::connect(server_url("sagaflow"))
        .await
        .context("connecting to the suite's PostgreSQL")?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"),
        format!("CREATE DATABASE {DB_NAME}"),
    ] {
        admin
            .execute(Statement::from_string(admin.get_database_backend(), sql))
            .await?;
    }
    admin.close().await.ok();
    Ok(server_url(DB_NAME))
}

/// Deletes the topics earlier runs left on the suite's broker (each run
/// uses a prefix of its own).
async fn delete_old_topics() -> anyhow::Result<usize> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()?;
    let admin = Arc::new(admin);
    let meta_client = Arc::clone(&admin);
    let names: Vec<String> = tokio::task::spawn_blocking(move || {
        meta_client
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| {
                m.topics()
                    .iter()
                    .map(|t| t.name().to_owned())
                    .filter(|n| !n.starts_with("__"))
                    .collect()
            })
    })
    .await??;
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin
        .delete_topics(&refs, &AdminOptions::new())
        .await
        .context("deleting old topics")?;
    Ok(names.len())
}

// ---------------------------------------------------------------------------
// The clients.
// ---------------------------------------------------------------------------

/// A POST that must answer 201 (set-up: no faults yet).
async fn post_created(
    http: &reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let r = http.post(&url).json(&body).send().await?;
    let status = r.status();
    ensure!(
        status == 201,
        "POST {url}: {status} {}",
        r.text().await.unwrap_or_default()
    );
    Ok(())
}

/// Opens the accounts and pays in their deposits, before any fault (each
/// must be a 201, once); returns each account's deposit in cents.
async fn open_accounts(http: &reqwest::Client, base: &str) -> anyhow::Result<HashMap<i64, i64>> {
    let mut deposits = HashMap::new();
    let mut setup = tokio::task::JoinSet::new();
    for user in 1..=ACCOUNTS {
        let amount = if user % UNDERFUNDED_EVERY == 0 {
            POOR_DEPOSIT_CENTS
        } else {
            RICH_DEPOSIT_CENTS
        };
        deposits.insert(user, amount);
        let (http, base) = (http.clone(), base.to_owned());
        setup.spawn(async move {
            post_created(
                &http,
                format!("{base}/accounts"),
                serde_json::json!({ "user_id": user }),
            )
            .await?;
            post_created(
                &http,
                format!("{base}/accounts/{user}/deposits"),
                serde_json::json!({ "amount": cents(amount) }),
            )
            .await
        });
        if setup.len() >= 16 {
            setup.join_next().await.context("setup task")???;
        }
    }
    while let Some(r) = setup.join_next().await {
        r??;
    }
    Ok(deposits)
}

/// One order to place.
struct Planned {
    key: String,
    user: i64,
    cents: i64,
}

/// Which account pays what, under which key.
fn plan_orders(rng: &mut Rng, run_id: &str) -> Vec<Planned> {
    (0..ORDERS)
        .map(|i| Planned {
            key: format!("fault-{run_id}-{i}"),
            user: i64::try_from(between(rng, 1, ACCOUNTS as u64)).unwrap_or(1),
            cents: i64::try_from(between(rng, AMOUNT_CENTS.0 as u64, AMOUNT_CENTS.1 as u64))
                .unwrap_or(100),
        })
        .collect()
}

#[derive(Default)]
struct ClientStats {
    /// POSTs sent again (after a 5xx or no answer).
    retries: AtomicU64,
    /// 503s: the database could not answer and nothing was done.
    unavailable: AtomicU64,
    /// Other 5xx: the outcome is unknown (a connection cut mid-request).
    server_errors: AtomicU64,
    transport_errors: AtomicU64,
    /// Retries answered 200: an earlier attempt had placed the order.
    answered_existing: AtomicU64,
}

/// Places `p`, retrying with the same key while the server fails or does
/// not answer; returns the order number.
async fn place(
    http: &reqwest::Client,
    base: &str,
    p: &Planned,
    stats: &ClientStats,
) -> anyhow::Result<String> {
    let body = serde_json::json!({ "user_id": p.user, "amount": cents(p.cents) });
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        if !first {
            stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        let sent = http
            .post(format!("{base}/orders"))
            .header("Idempotency-Key", &p.key)
            .json(&body)
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status() == 201 || r.status() == 200 => {
                if r.status() == 200 {
                    ensure!(!first, "a fresh key {} was answered 200", p.key);
                    stats.answered_existing.fetch_add(1, Ordering::Relaxed);
                }
                let v: serde_json::Value = r.json().await?;
                let order_no = v["order_no"]
                    .as_str()
                    .with_context(|| format!("no order_no in {v}"))?;
                return Ok(order_no.to_owned());
            }
            Ok(r) if r.status().is_server_error() => {
                let counter = if r.status() == 503 {
                    &stats.unavailable
                } else {
                    &stats.server_errors
                };
                counter.fetch_add(1, Ordering::Relaxed);
                format!("{}", r.status())
            }
            Ok(r) => bail!(
                "POST /orders (key {}): {} {}",
                p.key,
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) => {
                stats.transport_errors.fetch_add(1, Ordering::Relaxed);
                e.to_string()
            }
        };
        ensure!(
            started.elapsed() < REQUEST_DEADLINE,
            "POST /orders (key {}) still failing after {REQUEST_DEADLINE:?}: {failure}",
            p.key
        );
        first = false;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// [`CLIENTS`] clients placing the plan's orders, spread evenly over
/// [`PLACING_WINDOW`].
struct Placing {
    clients: tokio::task::JoinSet<anyhow::Result<()>>,
    stats: Arc<ClientStats>,
    placed: Arc<Mutex<HashMap<String, String>>>,
    started: Instant,
}

impl Placing {
    fn start(http: &reqwest::Client, base: &str, plan: Vec<Planned>) -> Placing {
        let plan = Arc::new(plan);
        let stats = Arc::new(ClientStats::default());
        let placed = Arc::new(Mutex::new(HashMap::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let (http, base, plan, stats, placed, next) = (
                http.clone(),
                base.to_owned(),
                Arc::clone(&plan),
                Arc::clone(&stats),
                Arc::clone(&placed),
                Arc::clone(&next),
            );
            clients.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = plan.get(i) else { break };
                    let at = started + PLACING_WINDOW * u32::try_from(i)? / ORDERS_U32;
                    tokio::time::sleep_until(at.into()).await;
                    let order_no = place(&http, &base, p, &stats).await?;
                    placed
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .insert(p.key.clone(), order_no);
                }
                anyhow::Ok(())
            });
        }
        Placing {
            clients,
            stats,
            placed,
            started,
        }
    }

    /// Waits until every POST was answered; returns key → order number.
    async fn finish(&mut self) -> anyhow::Result<HashMap<String, String>> {
        while let Some(r) = self.clients.join_next().await {
            r??;
        }
        let mut placed = self
            .placed
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(std::mem::take(&mut *placed))
    }
}

// ---------------------------------------------------------------------------
// Faults.
// ---------------------------------------------------------------------------

/// What the service restarts did.
struct ServiceFaults {
    kafka_down: Duration,
    pg_down: Duration,
    ended: Instant,
    timeline: Vec<(Duration, String)>,
}

/// Stops Kafka, keeps it down for [`KAFKA_DOWN_FOR`], starts it; then the
/// same with PostgreSQL. The sleeps are the faults' schedule and length, not
/// waits for a condition (the script itself waits until each service is
/// ready again).
fn restart_services(svc: &Services, t0: Instant) -> anyhow::Result<ServiceFaults> {
    let mut timeline = Vec::new();
    std::thread::sleep(KAFKA_FAULT_AT);
    let k = Instant::now();
    timeline.push((t0.elapsed(), "Kafka broker: stop".to_owned()));
    svc.run(&["stop", "kafka"])?;
    std::thread::sleep(KAFKA_DOWN_FOR);
    svc.run(&["start", "kafka"])?;
    let kafka_down = k.elapsed();
    timeline.push((t0.elapsed(), "Kafka broker: ready again".to_owned()));
    std::thread::sleep(PG_FAULT_AFTER_KAFKA);
    let p = Instant::now();
    timeline.push((t0.elapsed(), "PostgreSQL: stop".to_owned()));
    svc.run(&["stop", "pg"])?;
    std::thread::sleep(PG_DOWN_FOR);
    svc.run(&["start", "pg"])?;
    let pg_down = p.elapsed();
    timeline.push((t0.elapsed(), "PostgreSQL: ready again".to_owned()));
    Ok(ServiceFaults {
        kafka_down,
        pg_down,
        ended: Instant::now(),
        timeline,
    })
}

/// Every fault injected.
#[derive(Default)]
struct Faults {
    kills: BTreeMap<Role, usize>,
    services: Option<ServiceFaults>,
    /// Every fault, by time since the start of the test.
    timeline: Vec<(Duration, String)>,
    from: Duration,
    /// When the last one was over (None: no faults).
    last: Option<Instant>,
}

/// Restarts Kafka and then PostgreSQL (on a thread of their own) while
/// SIGKILLing a random worker or participant every one to two seconds and
/// starting another in its place, until both restarts are over and at
/// least [`MIN_KILLS`] processes died.
async fn inject_faults(
    fleet: &mut Fleet,
    services: &Arc<Services>,
    rng: &mut Rng,
    t0: Instant,
) -> anyhow::Result<Faults> {
    let mut faults = Faults {
        from: t0.elapsed(),
        ..Faults::default()
    };
    let restarts = {
        let svc = Arc::clone(services);
        tokio::task::spawn_blocking(move || restart_services(&svc, t0))
    };
    let mut last_kill = Instant::now();
    while !(restarts.is_finished() && faults.kills.values().sum::<usize>() >= MIN_KILLS) {
        ensure!(
            t0.elapsed() < Duration::from_secs(240),
            "the faults never ended (the service restarts hang?)"
        );
        // The pace of the faults, not a wait for a condition.
        let pause = between(rng, KILL_EVERY_MS.0, KILL_EVERY_MS.1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        fleet.respawn_exited()?;
        let (role, name) = fleet.kill_one(rng)?;
        *faults.kills.entry(role).or_default() += 1;
        faults
            .timeline
            .push((t0.elapsed(), format!("kill -9 {name}")));
        last_kill = Instant::now();
    }
    let svc = restarts.await??;
    faults.last = Some(last_kill.max(svc.ended));
    faults.timeline.extend(svc.timeline.iter().cloned());
    faults.timeline.sort_by_key(|(t, _)| *t);
    faults.services = Some(svc);
    Ok(faults)
}

// ---------------------------------------------------------------------------
// Reading the outcome.
// ---------------------------------------------------------------------------

async fn rows(db: &DatabaseConnection, sql: &str) -> anyhow::Result<Vec<sea_orm::QueryResult>> {
    db.query_all(Statement::from_string(db.get_database_backend(), sql))
        .await
        .with_context(|| sql.to_owned())
}

/// `(text, bigint)` pairs.
async fn pairs(db: &DatabaseConnection, sql: &str) -> anyhow::Result<Vec<(String, i64)>> {
    rows(db, sql)
        .await?
        .iter()
        .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
        .collect()
}

async fn count(db: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    let r = rows(db, sql).await?;
    let first = r.first().with_context(|| format!("no row from {sql}"))?;
    Ok(first.try_get_by_index(0)?)
}

/// Waits until every saga has finished and the outbox is drained, or
/// [`SETTLE`] has passed since `from`; returns how long it took. Processes
/// that exit meanwhile are started again.
async fn settle(
    db: &DatabaseConnection,
    fleet: &mut Fleet,
    from: Instant,
) -> anyhow::Result<Result<Duration, String>> {
    loop {
        let open = count(
            db,
            "SELECT count(*) FROM saga_instances WHERE state IN ('RUNNING', 'WAITING', 'COMPENSATING')",
        )
        .await;
        let outbox = count(db, "SELECT count(*) FROM outbox").await;
        let sagas = count(db, "SELECT count(*) FROM saga_instances").await;
        if let (Ok(0), Ok(0), Ok(n)) = (&open, &outbox, &sagas) {
            if *n >= ORDERS as i64 {
                return Ok(Ok(from.elapsed()));
            }
        }
        fleet.respawn_exited()?;
        if from.elapsed() > SETTLE {
            return Ok(Err(format!(
                "not settled {SETTLE:?} after the last fault: {open:?} sagas still active, \
                 {outbox:?} outbox rows, {sagas:?} sagas in all"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `topic` from the beginning to its end; returns each message's
/// `(type, order_no)`.
fn read_order_events(topic: &str) -> anyhow::Result<Vec<(String, String)>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", format!("fault-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()?;
    let wait = Duration::from_secs(10);
    let meta = consumer.fetch_metadata(Some(topic), wait)?;
    let partitions = meta
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
        .unwrap_or_default();
    ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    let mut left = 0;
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, wait)?;
        left += high - low;
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
    }
    consumer.assign(&tpl)?;
    let mut events = Vec::new();
    while left > 0 {
        let m = consumer
            .poll(wait)
            .with_context(|| format!("{left} message(s) of {topic} never came"))??;
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        events.push((
            v["type"].as_str().unwrap_or_default().to_owned(),
            v["order_no"].as_str().unwrap_or_default().to_owned(),
        ));
        left -= 1;
    }
    Ok(events)
}

/// Runs `sagaflow verify --json` against the suite's database; returns the
/// number of checks and the violations.
fn verify_process(db_url: &str) -> anyhow::Result<(u64, Vec<String>)> {
    let out = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["verify", "--json", "--database-url", db_url])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .context("running sagaflow verify")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "sagaflow verify ({}) printed no JSON report: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let violations: Vec<String> = report["violations"]
        .as_array()
        .context("no violations array")?
        .iter()
        .map(|v| format!("{}: {}: {}", v["check"], v["subject"], v["detail"]))
        .collect();
    ensure!(
        out.status.success() == violations.is_empty(),
        "sagaflow verify exited {} with {} violation(s)",
        out.status,
        violations.len()
    );
    Ok((report["checks"].as_u64().unwrap_or(0), violations))
}

/// How many lines of the processes' logs contain `needle`.
fn grep_logs(dir: &Path, needle: &str) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| text.lines().filter(|l| l.contains(needle)).count())
        .sum()
}

fn list(items: impl IntoIterator<Item = String>, empty: &str) -> String {
    let items: Vec<String> = items.into_iter().collect();
    if items.is_empty() {
        empty.to_owned()
    } else {
        items.join(", ")
    }
}

// ---------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------

/// What a run found: the figures, and every broken expectation.
#[derive(Default)]
struct Outcome {
    figures: Vec<(String, String)>,
    failures: Vec<String>,
}

impl Outcome {
    fn figure(&mut self, name: &str, value: impl Into<String>) {
        self.figures.push((name.to_owned(), value.into()));
    }
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_survive_killed_processes_and_restarted_services() {
    let t0 = Instant::now();
    let seed = std::env::var("SAGAFLOW_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let n = uuid::Uuid::new_v4().as_u128();
            (n as u64) ^ ((n >> 64) as u64)
        });
    let mut outcome = Outcome::default();
    let result = run(seed, t0, &mut outcome).await;
    outcome.figure("total wall time", secs(t0.elapsed()));
    if let Err(e) = &result {
        outcome.failures.push(format!("the run stopped: {e:#}"));
    }
    let summary = summary(seed, &outcome);
    let dir = out_dir();
    std::fs::create_dir_all(&dir).ok();
    std::fs::write(dir.join("last-run.txt"), &summary).ok();
    // Straight to the stderr handle: cargo shows it for a passing test too
    // (libtest captures only the print macros).
    let _ = std::io::stderr().write_all(summary.as_bytes());
    assert!(
        outcome.failures.is_empty(),
        "the fault suite found {} problem(s); figures and logs in {}:\n{}",
        outcome.failures.len(),
        dir.display(),
        outcome.failures.join("\n")
    );
}

fn summary(seed: u64, outcome: &Outcome) -> String {
    let mut rows: Vec<(&str, String)> = vec![(
        "seed",
        format!("{seed}  (SAGAFLOW_FAULT_SEED={seed} replays this plan)"),
    )];
    rows.extend(outcome.figures.iter().map(|(n, v)| (n.as_str(), v.clone())));
    rows.push((
        "result",
        if outcome.failures.is_empty() {
            "PASS".to_owned()
        } else {
            let mut r = "FAIL".to_owned();
            for f in &outcome.failures {
                let _ = write!(r, "\n✗ {f}");
            }
            r
        },
    ));
    rows.push((
        "reproduce",
        "cargo test --test faults -- --nocapture   (figures also in target/fault-suite/last-run.txt)"
            .to_owned(),
    ));
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0) + 2;
    let mut s = String::from("\n===== sagaflow fault suite =====\n");
    for (name, value) in rows {
        let mut lines = value.lines();
        let _ = writeln!(s, "{name:<width$}{}", lines.next().unwrap_or(""));
        for l in lines {
            let _ = writeln!(s, "{:<width$}{l}", "");
        }
    }
    s.push_str("================================\n");
    s
}

async fn run(seed: u64, t0: Instant, out: &mut Outcome) -> anyhow::Result<()> {
    let mut rng = <Rng as rand::SeedableRng>::seed_from_u64(seed);
    let _lock = suite_lock().await?;
    let logs = out_dir().join("logs");
    std::fs::remove_dir_all(&logs).ok();
    std::fs::create_dir_all(&logs)?;
    if let Ok(tuning) = std::env::var("SAGAFLOW_FAULT_TUNING") {
        out.figure("saga tuning", tuning);
    }

    // The suite's own services (stopped again when `services` drops, after
    // the processes: `fleet` is declared later, so it drops first).
    let services = Arc::new(Services {
        log: logs.join("services.log"),
    });
    {
        let svc = Arc::clone(&services);
        tokio::task::spawn_blocking(move || svc.run(&["start"])).await??;
    }
    let db_url = fresh_database().await?;
    let old_topics = delete_old_topics().await?;
    let prefix = format!("f{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let setup_took = t0.elapsed();

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let (mut fleet, base) = start_fleet(&db_url, &prefix, &logs, &http).await?;
    out.figure(
        "processes",
        format!(
            "api, relay, {WORKERS} workers, {PARTICIPANTS} funds participants, each its own OS \
             process (lease {LEASE_MS} ms, Kafka session timeout 4 s)"
        ),
    );
    let deposits = open_accounts(&http, &base).await?;
    let run_id = &prefix[1..prefix.len() - 1];
    let mut placing = Placing::start(&http, &base, plan_orders(&mut rng, run_id));
    // The faults hit a system that works: the consumer groups have formed
    // and orders are being settled.
    let db = Database::connect(&db_url).await?;
    let until = Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT count(*) FROM orders WHERE status <> 'PENDING'").await? < WARM {
        ensure!(
            Instant::now() < until,
            "no {WARM} orders settled within 60 s of the first one; see {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `SAGAFLOW_FAULTS=0` leaves the faults out: the same run and checks,
    // for comparison.
    let faults = if std::env::var("SAGAFLOW_FAULTS").as_deref() == Ok("0") {
        Faults::default()
    } else {
        inject_faults(&mut fleet, &services, &mut rng, t0).await?
    };
    let placed = placing.finish().await?;
    let placing_took = placing.started.elapsed();
    // Without faults, settling counts from the last order placed.
    let settle_from = faults.last.unwrap_or_else(Instant::now);

    let settled = settle(&db, &mut fleet, settle_from).await?;
    fleet.respawn_exited()?;

    // The figures of the run.
    let by_status: BTreeMap<String, i64> = pairs(
        &db,
        "SELECT status::text, count(*) FROM orders GROUP BY status",
    )
    .await?
    .into_iter()
    .collect();
    let paid = by_status.get("PAID").copied().unwrap_or(0);
    let failed = by_status.get("FAILED").copied().unwrap_or(0);
    let reasons = pairs(
        &db,
        "SELECT CASE WHEN failure_reason LIKE 'insufficient funds%' THEN 'insufficient funds' \
                ELSE COALESCE(left(failure_reason, 80), '(none)') END, count(*) \
         FROM orders WHERE status = 'FAILED' GROUP BY 1 ORDER BY 2 DESC",
    )
    .await?;
    out.figure(
        "orders placed",
        format!(
            "{} over {ACCOUNTS} accounts ({} underfunded), in {}",
            placed.len(),
            ACCOUNTS / UNDERFUNDED_EVERY,
            secs(placing_took)
        ),
    );
    out.figure("  PAID", paid.to_string());
    out.figure(
        "  FAILED",
        format!(
            "{failed}  ({})",
            list(reasons.iter().map(|(r, n)| format!("{r}: {n}")), "-")
        ),
    );
    out.figure(
        "  other states",
        list(
            by_status
                .iter()
                .filter(|(s, _)| *s != "PAID" && *s != "FAILED")
                .map(|(s, n)| format!("{s}: {n}")),
            "none",
        ),
    );
    let stat = |c: &AtomicU64| c.load(Ordering::Relaxed);
    out.figure(
        "POST /orders retried",
        format!(
            "{} times (503 {}, other 5xx {}, no answer {}), same Idempotency-Key; {} \
             answered 200 (an earlier attempt had placed the order)",
            stat(&placing.stats.retries),
            stat(&placing.stats.unavailable),
            stat(&placing.stats.server_errors),
            stat(&placing.stats.transport_errors),
            stat(&placing.stats.answered_existing),
        ),
    );
    let kills: usize = faults.kills.values().sum();
    let restarts = 2 * usize::from(faults.services.is_some());
    out.figure(
        "faults injected",
        match faults.last {
            Some(last) => format!(
                "{} from {} to {} after the start",
                kills + restarts,
                secs(faults.from),
                secs(last.duration_since(t0))
            ),
            None => "0 (SAGAFLOW_FAULTS=0)".to_owned(),
        },
    );
    out.figure(
        "  kill -9",
        format!(
            "{kills}: worker {}, participant {} (each replaced at once)",
            faults.kills.get(&Role::Worker).unwrap_or(&0),
            faults.kills.get(&Role::Participant).unwrap_or(&0)
        ),
    );
    let down = |d: Option<Duration>| match d {
        Some(d) => format!("1 (stop → start: {} down)", secs(d)),
        None => "0".to_owned(),
    };
    out.figure(
        "  Kafka broker restarts",
        down(faults.services.as_ref().map(|f| f.kafka_down)),
    );
    out.figure(
        "  PostgreSQL restarts",
        down(faults.services.as_ref().map(|f| f.pg_down)),
    );
    out.figure(
        "  timeline",
        faults
            .timeline
            .iter()
            .map(|(t, what)| format!("{:>6.1} s  {what}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    // A process that could not start while a service was down said so and
    // exited, as it should (and was started again); anything else that
    // ended by itself is a crash.
    let (no_start, crashed): (Vec<&Exit>, Vec<&Exit>) =
        fleet.exits.iter().partition(|e| e.failed_to_start);
    out.figure(
        "  exited by themselves",
        format!(
            "{} could not start while a service was down, and were started again ({}); \
             {} crashed",
            no_start.len(),
            list(no_start.iter().map(|e| e.what.clone()), "-"),
            crashed.len()
        ),
    );
    let events: BTreeMap<String, i64> = pairs(
        &db,
        "SELECT kind::text, count(*) FROM saga_events \
         WHERE kind IN ('TIMED_OUT', 'RETRY_SCHEDULED', 'REPLY_IGNORED', 'COMPENSATION_STARTED') \
         GROUP BY kind",
    )
    .await?
    .into_iter()
    .collect();
    let ev = |k: &str| events.get(k).copied().unwrap_or(0);
    out.figure(
        "saga history",
        format!(
            "{} timeouts, {} retries, {} compensations, {} stale or duplicate replies ignored",
            ev("TIMED_OUT"),
            ev("RETRY_SCHEDULED"),
            ev("COMPENSATION_STARTED"),
            ev("REPLY_IGNORED")
        ),
    );
    out.figure(
        "time to settle",
        match &settled {
            Ok(d) => format!(
                "{} after the last {} (bound {})",
                secs(*d),
                if faults.last.is_some() {
                    "fault"
                } else {
                    "order placed"
                },
                secs(SETTLE)
            ),
            Err(_) => format!("NOT within {}", secs(SETTLE)),
        },
    );
    let settled_in_time = settled.is_ok();
    if let Err(e) = settled {
        out.failures.push(e);
    }

    // The checks (the figures come first, so that a failed run shows them
    // too). The invariants `verify` checks hold at any moment, sagas in
    // flight or not; the books are exact, and downstream has every
    // outcome, once everything has settled.
    let (checks, violations) = {
        let url = db_url.clone();
        tokio::task::spawn_blocking(move || verify_process(&url)).await??
    };
    let anomalies = common::money_anomalies(&db).await;
    let unbalanced = if settled_in_time {
        let unbalanced = check_orders_and_books(&db, &placed, &deposits, paid, failed, out).await?;
        let topic = format!("{prefix}orders.events");
        let events = tokio::task::spawn_blocking(move || read_order_events(&topic)).await??;
        check_order_events(&db, &events, out).await?;
        Some(unbalanced)
    } else {
        None
    };
    out.figure(
        "anomalies",
        format!(
            "{}  (sagaflow verify: {checks} checks, {} violation(s); money_anomalies: {}; \
             accounts off their deposits − paid orders: {})",
            violations.len() + anomalies.len() + unbalanced.unwrap_or(0),
            violations.len(),
            anomalies.len(),
            unbalanced.map_or_else(|| "not checked, not settled".to_owned(), |n| n.to_string())
        ),
    );
    out.check(violations.is_empty(), || {
        format!("sagaflow verify: {violations:?}")
    });
    out.check(anomalies.is_empty(), || {
        format!("money_anomalies: {anomalies:?}")
    });
    out.check(crashed.is_empty(), || {
        format!(
            "processes that were not killed ended: {}",
            list(crashed.iter().map(|e| e.what.clone()), "-")
        )
    });
    let panics = grep_logs(&logs, "panicked");
    out.check(panics == 0, || {
        format!(
            "{panics} panic line(s) in the processes' logs ({})",
            logs.display()
        )
    });
    out.figure(
        "process logs",
        format!(
            "{} ({} ERROR lines, {} WARN lines)",
            logs.display(),
            grep_logs(&logs, " ERROR "),
            grep_logs(&logs, " WARN ")
        ),
    );
    out.figure(
        "set-up (services, database)",
        format!("{}; {old_topics} old topic(s) deleted", secs(setup_took)),
    );
    db.close().await.ok();
    Ok(())
}

/// Every POST placed exactly the order the database holds under its key,
/// every order and saga finished as PAID/COMPLETED or FAILED/COMPENSATED,
/// and every account's balance is its deposit minus its paid orders, as
/// its ledger says too. Returns how many accounts do not balance.
async fn check_orders_and_books(
    db: &DatabaseConnection,
    placed: &HashMap<String, String>,
    deposits: &HashMap<i64, i64>,
    paid: i64,
    failed: i64,
    out: &mut Outcome,
) -> anyhow::Result<usize> {
    let orders = count(db, "SELECT count(*) FROM orders").await?;
    out.check(placed.len() == ORDERS, || {
        format!("{} of {ORDERS} orders placed", placed.len())
    });
    out.check(orders == ORDERS as i64, || {
        format!("{orders} orders in the database, {ORDERS} placed (doubled or lost)")
    });
    let keyed: HashMap<String, String> = rows(
        db,
        "SELECT idempotency_key, order_no FROM orders WHERE idempotency_key IS NOT NULL",
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
    .collect::<anyhow::Result<_>>()?;
    let mismatched: Vec<&String> = placed
        .iter()
        .filter(|(k, o)| keyed.get(*k) != Some(*o))
        .map(|(k, _)| k)
        .collect();
    out.check(mismatched.is_empty() && keyed.len() == placed.len(), || {
        format!(
            "the orders under the clients' keys differ from what the clients were told \
             ({} mismatched, {} keyed orders for {} keys), e.g. {:?}",
            mismatched.len(),
            keyed.len(),
            placed.len(),
            mismatched.iter().take(3).collect::<Vec<_>>()
        )
    });
    out.check(paid + failed == placed.len() as i64, || {
        format!(
            "PAID {paid} + FAILED {failed} ≠ {} orders placed",
            placed.len()
        )
    });
    out.check(paid > 0 && failed > 0, || {
        format!("expected both paid and refused orders, got PAID {paid}, FAILED {failed}")
    });

    // Every saga finished; none is left for an operator.
    let sagas: BTreeMap<String, i64> = pairs(
        db,
        "SELECT saga_type || ' ' || state::text, count(*) FROM saga_instances GROUP BY 1",
    )
    .await?
    .into_iter()
    .collect();
    let completed = sagas.get("order_payment COMPLETED").copied().unwrap_or(0);
    let compensated = sagas.get("order_payment COMPENSATED").copied().unwrap_or(0);
    out.check(
        completed == paid && compensated == failed && sagas.values().sum::<i64>() == orders,
        || format!("sagas by state {sagas:?} do not match PAID {paid}, FAILED {failed}"),
    );
    let unfinished = pairs(
        db,
        "SELECT id::text || ' ' || state::text || ' ' || COALESCE(last_error, ''), attempt::bigint \
         FROM saga_instances WHERE state NOT IN ('COMPLETED', 'COMPENSATED') LIMIT 5",
    )
    .await?;
    out.check(unfinished.is_empty(), || {
        format!("unfinished sagas (id state last error, attempt): {unfinished:?}")
    });

    // The books, account by account.
    let accounts = rows(
        db,
        "SELECT a.user_id, (a.balance * 100)::bigint, \
                COALESCE((SELECT (sum(amount) * 100)::bigint FROM ledger_entries l WHERE l.user_id = a.user_id AND l.kind = 'DEPOSIT'), 0), \
                COALESCE((SELECT (sum(amount) * 100)::bigint FROM ledger_entries l WHERE l.user_id = a.user_id AND l.kind = 'DEBIT'), 0), \
                COALESCE((SELECT (sum(amount) * 100)::bigint FROM ledger_entries l WHERE l.user_id = a.user_id AND l.kind = 'REFUND'), 0), \
                COALESCE((SELECT (sum(amount) * 100)::bigint FROM orders o WHERE o.user_id = a.user_id AND o.status = 'PAID'), 0) \
         FROM accounts a ORDER BY a.user_id",
    )
    .await?;
    let mut unbalanced = Vec::new();
    for r in &accounts {
        let user: i64 = r.try_get_by_index(0)?;
        let [balance, deposited, debits, refunds, paid_cents]: [i64; 5] = [
            r.try_get_by_index(1)?,
            r.try_get_by_index(2)?,
            r.try_get_by_index(3)?,
            r.try_get_by_index(4)?,
            r.try_get_by_index(5)?,
        ];
        let sent = deposits.get(&user).copied().unwrap_or(-1);
        if deposited != sent
            || balance != deposited - debits + refunds
            || balance != sent - paid_cents
            || balance < 0
        {
            unbalanced.push(format!(
                "account {user}: balance {}, deposits {} (paid in {}), debits {}, refunds {}, \
                 PAID orders {}",
                cents(balance),
                cents(deposited),
                cents(sent),
                cents(debits),
                cents(refunds),
                cents(paid_cents)
            ));
        }
    }
    out.check(
        accounts.len() == ACCOUNTS as usize && unbalanced.is_empty(),
        || {
            format!(
                "{} of {} accounts do not balance: {unbalanced:?}",
                unbalanced.len(),
                accounts.len()
            )
        },
    );
    let doubled = count(
        db,
        "SELECT count(*) FROM (SELECT saga_id, kind FROM ledger_entries WHERE saga_id IS NOT NULL \
         GROUP BY saga_id, kind HAVING count(*) > 1) d",
    )
    .await?;
    out.check(doubled == 0, || {
        format!("{doubled} saga(s) moved the same kind of money twice")
    });
    Ok(unbalanced.len())
}

/// Downstream saw it all: every PAID order has an `OrderPaid` on
/// `orders.events` and every FAILED one an `OrderFailed` (at least once:
/// a relay that died between the broker's ack and its delete publishes
/// again), and nothing else.
async fn check_order_events(
    db: &DatabaseConnection,
    events: &[(String, String)],
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let wanted: BTreeSet<(String, String)> = rows(
        db,
        "SELECT CASE status WHEN 'PAID' THEN 'OrderPaid' WHEN 'FAILED' THEN 'OrderFailed' \
                ELSE status::text END, order_no FROM orders",
    )
    .await?
    .iter()
    .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
    .collect::<anyhow::Result<_>>()?;
    let seen: BTreeSet<(String, String)> = events.iter().cloned().collect();
    let missing: Vec<_> = wanted.difference(&seen).take(3).collect();
    let unexpected: Vec<_> = seen.difference(&wanted).take(3).collect();
    out.figure(
        "orders.events",
        format!(
            "{} events read back from Kafka for {} orders ({} duplicates)",
            events.len(),
            seen.len(),
            events.len() - seen.len()
        ),
    );
    out.check(missing.is_empty() && unexpected.is_empty(), || {
        format!(
            "orders.events disagrees with the orders: {} missing (e.g. {missing:?}), \
             {} unexpected (e.g. {unexpected:?})",
            wanted.difference(&seen).count(),
            seen.difference(&wanted).count()
        )
    });
    Ok(())
}
