//! `sagaflow-bench`: sagaflow's benchmark harness.
//!
//! Runs scenarios against the real PostgreSQL and Kafka (start them with
//! `scripts/services.sh start`; `scripts/bench.sh` does both), each in a
//! database of its own, with pgbench's simple-update on the same server as
//! the run's yardstick. Writes `bench/results/<date>-<host>.json` and
//! `.svg`, and prints a summary table. See `bench/README.md`.

// A report on stdout is this program's output; ratios and rates are
// floating point (no money is involved here).
#![allow(clippy::print_stdout, clippy::float_arithmetic)]

mod held_xmin;
mod report;
mod scenario;
mod system;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use sea_orm::ConnectionTrait;

use crate::report::Run;
use crate::scenario::{Env, Load};

/// mimalloc rather than glibc's malloc: perf over order-e2e put a quarter
/// of this process's CPU in glibc's malloc and free (JSON values, SQL
/// parameters, Kafka payloads are all short-lived allocations).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Orders through HTTP, Kafka and the funds participant.
    OrderE2e,
    /// Three local no-op steps per saga: the engine's own cost.
    #[value(name = "engine-3step")]
    Engine3step,
    /// One local no-op step per saga: the claim loop's cost.
    #[value(name = "claim-1step")]
    Claim1step,
    /// Every order on one account: the contention case.
    HotAccount,
    /// claim-1step with a million finished sagas already in the table.
    TableSize,
    /// order-e2e with 2 `sagaflow worker` and 2 `sagaflow participant
    /// funds` processes (and a relay) instead of one process.
    ScaleOut,
    /// claim-1step in waves, without and then with another session's
    /// transaction holding the xmin horizon for the whole run.
    HeldXmin,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::OrderE2e => "order-e2e",
            Scenario::Engine3step => "engine-3step",
            Scenario::Claim1step => "claim-1step",
            Scenario::HotAccount => "hot-account",
            Scenario::TableSize => "table-size",
            Scenario::ScaleOut => "scale-out",
            Scenario::HeldXmin => "held-xmin",
        }
    }
}

/// sagaflow's benchmark harness.
#[derive(Debug, Parser)]
#[command(name = "sagaflow-bench", version)]
struct Args {
    /// Scenarios to run, in order (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,

    /// A URL of the PostgreSQL server; each scenario makes its own
    /// database on it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://sagaflow:sagaflow@127.0.0.1:55432/sagaflow"
    )]
    database_url: String,

    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    kafka_bootstrap_servers: String,

    /// Sagas of claim-1step.
    #[arg(long, default_value_t = 20_000)]
    claim_sagas: u64,

    /// Sagas of each table-size round: 20,000 drain in 2 s here, too
    /// short for the 10 % the scenario is about (rounds of them moved
    /// between 85 and 102 %).
    #[arg(long, default_value_t = 100_000)]
    table_sagas: u64,

    /// held-xmin: sagas per wave (each half runs --xmin-waves of them).
    #[arg(long, default_value_t = 50_000)]
    xmin_wave: u64,

    /// held-xmin: waves per half, each inserted once the last one was
    /// drained.
    #[arg(long, default_value_t = 6)]
    xmin_waves: u64,

    /// Sagas of engine-3step.
    #[arg(long, default_value_t = 10_000)]
    engine_sagas: u64,

    /// Finished sagas already in the table for table-size.
    #[arg(long, default_value_t = 1_000_000)]
    table_rows: u64,

    /// order-e2e: orders per second (open loop); 0 runs closed loop with
    /// --concurrency clients instead.
    #[arg(long, default_value_t = 0, conflicts_with = "rate_per_pgbench")]
    rate: u32,

    /// order-e2e: open loop at this share of the baseline's commits/s
    /// (pgbench, 8 clients) measured at the start of the same run, e.g.
    /// 0.078 for the 500 orders/s on its 6,400-commit machine: the
    /// load follows the machine's speed of the hour instead of a fixed
    /// rate that is heavier on a slow hour than on a fast one.
    #[arg(long)]
    rate_per_pgbench: Option<f64>,

    /// order-e2e, scale-out and hot-account: clients of the closed loop,
    /// each with one order in flight until it is PAID or FAILED. 256 keeps
    /// two cores busy with batches big enough to show what the engine
    /// sustains (64 measured a lighter load: half the orders/s at twice the
    /// CPU per order, bench/README finding 35).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,

    /// order-e2e: seconds of placing orders.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,

    /// order-e2e: accounts the orders spread over.
    #[arg(long, default_value_t = 1_000)]
    accounts: u64,

    /// hot-account: orders (of 1.00) on the one account, which can pay for
    /// 80% of them.
    #[arg(long, default_value_t = 5_000)]
    hot_orders: u64,

    /// scale-out: `sagaflow worker` processes.
    #[arg(long, default_value_t = 2)]
    split_workers: usize,

    /// scale-out: `sagaflow participant funds` processes.
    #[arg(long, default_value_t = 2)]
    split_participants: usize,

    /// scale-out: runtime threads of each `sagaflow` process it starts
    /// (passed as `TOKIO_WORKER_THREADS`); 0 keeps tokio's default of one
    /// per core. One thread each trimmed those processes' CPU per order by
    /// a tenth and left 2+2 against 1+1 where it was (finding 37).
    #[arg(long, default_value_t = 0)]
    process_threads: usize,

    /// Claim loops of the engine.
    #[arg(long, default_value_t = 4)]
    workers: usize,

    /// Sagas per claim (the service's default).
    #[arg(long, default_value_t = 256)]
    claim_batch: u32,

    /// Kafka consumers per consuming role (the service's default).
    #[arg(long, default_value_t = 1)]
    consumers: usize,

    /// The engine's Postgres pool size.
    #[arg(long, default_value_t = 32)]
    pool: u32,

    /// scale-out and table-size: rounds of each of the two layouts or
    /// tables they compare, in alternating order (A B, B A, ...), so that
    /// the machine's drift during a run weighs on both alike; the
    /// comparison is reported per round and as the median (of three, one
    /// disturbed round does not move it).
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Seconds of closed-loop orders run and thrown away before the first
    /// scenario that goes through Kafka (0: none). The broker's JVM
    /// compiles its hot paths during its first thousands of requests, and
    /// a run right after the services started measured the warm-up.
    #[arg(long, default_value_t = 15)]
    warm_up_s: u64,

    /// Longest the warm-up goes on, in seconds, while the JIT compiler of
    /// a Kafka broker on this machine still uses more than 5 % of a core
    /// (right after the broker starts it took a fifth of this project's
    /// 2-core bench machine for minutes). 0: only --warm-up-s.
    #[arg(long, default_value_t = 600)]
    warm_up_max_s: u64,

    /// Seconds of each pgbench run (0 skips the baseline).
    #[arg(long, default_value_t = 5)]
    baseline_s: u32,

    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,

    /// Keep the scenario databases.
    #[arg(long)]
    keep: bool,

    /// Small sizes, to see that the harness works.
    #[arg(long)]
    quick: bool,
}

/// The share of a core under which a local broker's JIT compiler counts as
/// settled: 0.7 % five minutes after it started, 22 % at three (finding
/// 32).
const JIT_SETTLED: f64 = 0.05;

/// How much longer the warm-up goes on while the broker's JIT compiles.
const JIT_CHUNK: Duration = Duration::from_secs(20);

/// The commit the harness was built from (`bench/build.rs`), `-dirty` if
/// its tree had changes then.
const BUILT_FROM: &str = env!("SAGAFLOW_BENCH_BUILT_FROM");

/// The commit of the tree the harness runs in, when it is not the one it
/// was built from (a copied binary, an A/B of two builds).
fn other_tree() -> Option<String> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let tree = if dirty { format!("{head}-dirty") } else { head };
    (tree != BUILT_FROM).then_some(tree)
}

/// The open-loop rate, in whole orders/s, that is `share` of `commits_per_s`.
fn open_rate(share: f64, commits_per_s: f64) -> anyhow::Result<u32> {
    let rate = (share * commits_per_s).round();
    if !(rate >= 1.0 && rate <= f64::from(u32::MAX)) {
        anyhow::bail!("--rate-per-pgbench {share} of {commits_per_s:.0} commits/s is not a rate of at least 1 order/s");
    }
    // In range and whole: checked just above.
    Ok(rate as u32)
}

/// Rounds of the two variants a scenario compares: `(round, second)`,
/// the first variant before the second in even rounds and after it in
/// odd ones (A B, B A, A B, ...).
fn alternating(rounds: usize) -> Vec<(usize, bool)> {
    (1..=rounds.max(1))
        .flat_map(|round| {
            let first = round % 2 == 0;
            [(round, first), (round, !first)]
        })
        .collect()
}

/// A round's name: `name` itself when there is one round, `name #k` when
/// there are more.
fn labelled(name: &str, round: usize, rounds: usize) -> String {
    if rounds > 1 {
        format!("{name} #{round}")
    } else {
        name.to_owned()
    }
}

/// Whether `label` is [`labelled`]'s name of a round of `name`.
fn is_round_of(label: &str, name: &str) -> bool {
    label == name
        || label
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(" #"))
            .is_some_and(|k| k.parse::<usize>().is_ok())
}

/// Notes on each round of `name` its throughput as a share of the same
/// round of `base`, and on the last one the median over the rounds.
fn compare_rounds(
    results: &mut [report::ScenarioResult],
    base: &str,
    name: &str,
    rounds: usize,
    what: &str,
) {
    let rate = |results: &[report::ScenarioResult], label: &str| {
        results
            .iter()
            .find(|r| r.name == label)
            .map(|r| r.sagas_per_second)
    };
    let mut shares = Vec::new();
    for round in 1..=rounds.max(1) {
        let (b, n) = (labelled(base, round, rounds), labelled(name, round, rounds));
        let (Some(of), Some(this)) = (rate(results, &b), rate(results, &n)) else {
            continue;
        };
        let share = this / of * 100.0;
        shares.push(share);
        if let Some(r) = results.iter_mut().find(|r| r.name == n) {
            r.notes
                .push(format!("{share:.1}% of {b}'s ({what}) throughput"));
        }
    }
    if shares.len() < 2 {
        return;
    }
    let mut sorted = shares.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    };
    let per_round: Vec<String> = shares.iter().map(|s| format!("{s:.1}%")).collect();
    if let Some(last) = results
        .iter_mut()
        .rev()
        .find(|r| is_round_of(&r.name, name))
    {
        last.notes.push(format!(
            "median over {} rounds: {median:.1}% of {what} (per round: {})",
            shares.len(),
            per_round.join(", ")
        ));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.claim_sagas = args.claim_sagas.min(2_000);
        args.table_sagas = args.table_sagas.min(2_000);
        args.engine_sagas = args.engine_sagas.min(1_000);
        args.table_rows = args.table_rows.min(50_000);
        args.xmin_wave = args.xmin_wave.min(2_000);
        args.xmin_waves = args.xmin_waves.min(3);
        args.duration_s = args.duration_s.min(5);
        args.accounts = args.accounts.min(100);
        args.hot_orders = args.hot_orders.min(500);
        args.baseline_s = args.baseline_s.min(2);
        args.warm_up_s = args.warm_up_s.min(2);
        args.warm_up_max_s = 0;
    }
    if args.scenarios.is_empty() {
        args.scenarios = Scenario::value_variants().to_vec();
    }
    let env = Env {
        database_url: args.database_url.clone(),
        kafka: args.kafka_bootstrap_servers.clone(),
        workers: args.workers,
        claim_batch: args.claim_batch,
        consumers: args.consumers,
        pool: args.pool,
        settle: Duration::from_secs(300),
        keep: args.keep,
        process_threads: args.process_threads,
    };
    // Warnings and errors only (RUST_LOG overrides): an engine that cannot
    // make progress says why instead of the run just waiting.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let admin = sea_orm::Database::connect(&args.database_url)
        .await
        .context("connect to DATABASE_URL (start the services: scripts/services.sh start)")?;
    let started = chrono::Utc::now();
    let machine = system::Machine::describe(&admin).await?;
    println!(
        "sagaflow-bench on {} ({} CPUs, {}), {}",
        machine.hostname, machine.cpus, machine.cpu_model, machine.postgres
    );
    // Autovacuum visits every database of the server in turn, so a server
    // holding hundreds of leftover databases vacuums the bench's own tables
    // late (measured: order-e2e 428 orders/s with 400 test databases
    // present, 480 without, claim UPDATE 1.13 -> 0.25 ms).
    let others = admin
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) AS n FROM pg_database WHERE NOT datistemplate AND datname NOT LIKE 'bench\\_%'",
        ))
        .await?
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
    if others > 20 {
        eprintln!(
            "warning: the server holds {others} other databases; autovacuum visits each in turn and \
             reaches the bench's tables late, which lowers every figure. Drop leftovers first \
             (test databases: scripts/test.sh drops them after a green run)."
        );
    }

    let baseline = if args.baseline_s > 0 {
        println!("baseline: pgbench simple-update, {} s × 2", args.baseline_s);
        let url = scenario::with_database(&args.database_url, "bench_pgbench");
        admin
            .execute_unprepared("DROP DATABASE IF EXISTS bench_pgbench")
            .await?;
        admin
            .execute_unprepared("CREATE DATABASE bench_pgbench")
            .await?;
        let seconds = args.baseline_s;
        let b = tokio::task::spawn_blocking(move || system::pgbench(&url, seconds)).await??;
        admin
            .execute_unprepared("DROP DATABASE IF EXISTS bench_pgbench")
            .await?;
        Some(b)
    } else {
        None
    };
    admin.close().await.ok();
    if let Some(share) = args.rate_per_pgbench {
        let Some(b) = &baseline else {
            anyhow::bail!("--rate-per-pgbench needs the baseline (--baseline-s > 0)");
        };
        args.rate = open_rate(share, b.tps_8_clients)?;
        println!(
            "open loop at {share} × {:.0} commits/s = {} orders/s",
            b.tps_8_clients, args.rate
        );
    }

    let through_kafka = [Scenario::OrderE2e, Scenario::HotAccount, Scenario::ScaleOut];
    if args.warm_up_s > 0 && args.scenarios.iter().any(|s| through_kafka.contains(s)) {
        println!("warm-up: {} s of orders, not reported", args.warm_up_s);
        let started = std::time::Instant::now();
        let mut chunk = Duration::from_secs(args.warm_up_s);
        loop {
            let jit_before = system::broker_jit_ms();
            let w = scenario::orders(
                &env,
                "warm-up",
                String::new(),
                args.accounts,
                "1000000.00",
                Load::Closed {
                    concurrency: args.concurrency,
                    duration: chunk,
                    orders: None,
                },
                None,
            )
            .await?;
            println!("  warm-up: {:.0} orders/s", w.sagas_per_second);
            // Go on while a broker on this machine is still compiling its
            // hot paths (finding 32): measured then, a run would count a
            // JIT compiler's share of the cores against sagaflow.
            let jit_share = jit_before
                .zip(system::broker_jit_ms())
                .map(|(before, after)| (after.saturating_sub(before)) as f64 / w.seconds / 1000.0);
            match jit_share {
                Some(share)
                    if share > JIT_SETTLED && started.elapsed().as_secs() < args.warm_up_max_s =>
                {
                    println!(
                        "  the broker's JIT compiler used {:.0} % of a core: {} s more",
                        share * 100.0,
                        JIT_CHUNK.as_secs()
                    );
                    chunk = JIT_CHUNK;
                }
                Some(share) if share > JIT_SETTLED => {
                    println!(
                        "  the broker's JIT compiler still uses {:.0} % of a core after {} s (--warm-up-max-s); measuring anyway",
                        share * 100.0,
                        started.elapsed().as_secs()
                    );
                    break;
                }
                _ => break,
            }
        }
    }

    let mut results = Vec::new();
    for s in &args.scenarios {
        let name = s.name();
        println!("running {name}");
        let rs = match s {
            Scenario::HeldXmin => {
                held_xmin::run(
                    &env,
                    held_xmin::Sizes {
                        wave: args.xmin_wave,
                        waves: args.xmin_waves,
                    },
                )
                .await?
            }
            Scenario::Claim1step => {
                vec![
                    scenario::backlog(
                        &env,
                        name,
                        format!(
                            "{} sagas of one local no-op step, inserted at once and drained",
                            args.claim_sagas
                        ),
                        "bench_1step",
                        args.claim_sagas,
                        0,
                    )
                    .await?,
                ]
            }
            Scenario::Engine3step => {
                vec![
                    scenario::backlog(
                        &env,
                        name,
                        format!(
                            "{} sagas of three local no-op steps, inserted at once and drained",
                            args.engine_sagas
                        ),
                        "bench_3step",
                        args.engine_sagas,
                        0,
                    )
                    .await?,
                ]
            }
            Scenario::TableSize => {
                // Against the same drains of an empty table, round by
                // round: two separate runs of a few seconds each differed
                // by more than the 10 % this is about.
                let base = "table-size-empty";
                let empty = scenario::BacklogDb::create(&env, base, 0).await?;
                let full = scenario::BacklogDb::create(&env, name, args.table_rows).await?;
                let mut rs = Vec::new();
                for (round, second) in alternating(args.rounds) {
                    let (db, label, what) = if second {
                        (
                            &full,
                            name,
                            format!(
                                "{} finished sagas (and their history) already in the table",
                                args.table_rows
                            ),
                        )
                    } else {
                        (&empty, base, "an empty table".to_owned())
                    };
                    let description =
                        format!("claim-1step ({} sagas) with {what}", args.table_sagas);
                    rs.push(
                        db.round(
                            &env,
                            &labelled(label, round, args.rounds),
                            description,
                            "bench_1step",
                            args.table_sagas,
                        )
                        .await?,
                    );
                    db.settle().await?;
                }
                empty.drop(&env).await?;
                full.drop(&env).await?;
                compare_rounds(
                    &mut rs,
                    base,
                    name,
                    args.rounds,
                    "the same drain of an empty table",
                );
                rs
            }
            Scenario::OrderE2e => {
                let duration = Duration::from_secs(args.duration_s);
                let (load, how) = if args.rate > 0 {
                    (
                        Load::Open {
                            rate: args.rate,
                            duration,
                        },
                        match args.rate_per_pgbench {
                            Some(share) => format!(
                                "open loop at {} orders/s, {share} of the baseline's commits/s",
                                args.rate
                            ),
                            None => format!("open loop at {} orders/s", args.rate),
                        },
                    )
                } else {
                    (
                        Load::Closed {
                            concurrency: args.concurrency,
                            duration,
                            orders: None,
                        },
                        format!("closed loop, {} clients", args.concurrency),
                    )
                };
                vec![scenario::orders(
                    &env,
                    name,
                    format!(
                        "orders over HTTP for {} s ({how}) across {} accounts; paid through Kafka and the funds participant",
                        args.duration_s, args.accounts
                    ),
                    args.accounts,
                    "1000000.00",
                    load,
                    None,
                )
                .await?]
            }
            Scenario::ScaleOut => {
                // The same load on one worker and one participant process,
                // then on more, round by round: scaling out is the second
                // against the first, and either against order-e2e's single
                // process is what splitting the roles costs.
                let base = "scale-out-1";
                let mut rs = Vec::new();
                for (round, second) in alternating(args.rounds) {
                    let (label, workers, participants) = if second {
                        (
                            name,
                            args.split_workers.max(1),
                            args.split_participants.max(1),
                        )
                    } else {
                        (base, 1, 1)
                    };
                    rs.push(
                        scenario::orders(
                            &env,
                            &labelled(label, round, args.rounds),
                            format!(
                                "order-e2e for {} s (closed loop, {} clients) with {workers} worker, {participants} funds participant and 1 relay processes; the API in the harness",
                                args.duration_s, args.concurrency
                            ),
                            args.accounts,
                            "1000000.00",
                            Load::Closed {
                                concurrency: args.concurrency,
                                duration: Duration::from_secs(args.duration_s),
                                orders: None,
                            },
                            Some(scenario::Split {
                                workers,
                                participants,
                            }),
                        )
                        .await?,
                    );
                }
                compare_rounds(&mut rs, base, name, args.rounds, "one process of each role");
                rs
            }
            Scenario::HotAccount => {
                let affordable = args.hot_orders * 4 / 5;
                vec![
                    scenario::orders(
                        &env,
                        name,
                        format!(
                            "{} orders of 1.00 on one account holding {affordable}.00 ({} clients)",
                            args.hot_orders, args.concurrency
                        ),
                        1,
                        &format!("{affordable}.00"),
                        Load::Closed {
                            concurrency: args.concurrency,
                            duration: Duration::from_secs(3600),
                            orders: Some(args.hot_orders),
                        },
                        None,
                    )
                    .await?,
                ]
            }
        };
        for mut r in rs {
            r.per_pgbench_commit = baseline
                .as_ref()
                .map(|b| r.sagas_per_second / b.tps_8_clients);
            println!(
                "  {}{:.0} sagas/s{}",
                if r.name == name {
                    String::new()
                } else {
                    format!("{}: ", r.name)
                },
                r.sagas_per_second,
                r.latency_ms
                    .as_ref()
                    .map_or(String::new(), |l| format!(", p99 {:.1} ms", l.p99))
            );
            results.push(r);
        }
    }
    // scale-out is also read against order-e2e's single process, in the
    // same run: all its rounds pooled.
    let single = results
        .iter()
        .find(|r| r.name == "order-e2e")
        .map(|r| r.sagas_per_second);
    let split = results.iter().filter(|r| is_round_of(&r.name, "scale-out"));
    let (sagas, seconds) = split.fold((0, 0.0), |(n, s), r| (n + r.sagas, s + r.seconds));
    if let (Some(single), true) = (single, seconds > 0.0) {
        if let Some(last) = results
            .iter_mut()
            .rev()
            .find(|r| is_round_of(&r.name, "scale-out"))
        {
            last.notes.push(format!(
                "{:.1}% of order-e2e's (every role in one process) throughput in this run (its rounds pooled)",
                sagas as f64 / seconds / single * 100.0
            ));
        }
    }

    let run = Run {
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        commit: BUILT_FROM.to_owned(),
        ran_in_tree: other_tree(),
        machine,
        baseline,
        scenarios: results,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    std::fs::create_dir_all(&args.out)?;
    let stem = format!(
        "{}-{}",
        started.format("%Y-%m-%dT%H%M%SZ"),
        run.machine.hostname
    );
    let json = args.out.join(format!("{stem}.json"));
    let svg = args.out.join(format!("{stem}.svg"));
    std::fs::write(&json, serde_json::to_string_pretty(&run)?)?;
    std::fs::write(&svg, run.svg())?;
    println!("\n{}", run.table());
    for r in &run.scenarios {
        for n in &r.notes {
            println!("{}: {n}", r.name);
        }
        if let Some(line) = r.cpu_by_process_line() {
            println!("{}: CPU ms per saga by process: {line}", r.name);
        }
        for c in r.checks.iter().filter(|c| !c.ok) {
            println!("{}: CHECK FAILED: {}: {}", r.name, c.what, c.detail);
        }
    }
    println!("results: {} and {}", json.display(), svg.display());
    let all_ok = run.scenarios.iter().all(|r| r.checks.iter().all(|c| c.ok));
    anyhow::ensure!(all_ok, "a correctness check failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_loop_rate_follows_the_baseline() {
        assert_eq!(open_rate(0.078, 2_437.0).unwrap(), 190);
        assert_eq!(open_rate(0.078, 6_400.0).unwrap(), 499);
        assert!(open_rate(0.0, 2_437.0).is_err());
        assert!(open_rate(f64::NAN, 2_437.0).is_err());
        assert!(open_rate(0.078, 1.0).is_err(), "under one order/s");
    }

    fn result(name: &str, rate: f64) -> report::ScenarioResult {
        report::ScenarioResult {
            name: name.to_owned(),
            description: String::new(),
            params: serde_json::Value::Null,
            sagas: 0,
            seconds: 1.0,
            sagas_per_second: rate,
            per_pgbench_commit: None,
            latency_ms: None,
            commits_per_saga: 0.0,
            cpu_ms_per_saga: 0.0,
            process_cpu_ms_per_saga: 0.0,
            cpu_ms_per_saga_by_process: Default::default(),
            timeline: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            horizon: None,
        }
    }

    #[test]
    fn rounds_alternate_which_variant_goes_first() {
        assert_eq!(
            alternating(3),
            vec![
                (1, false),
                (1, true),
                (2, true),
                (2, false),
                (3, false),
                (3, true)
            ]
        );
        assert_eq!(alternating(0), vec![(1, false), (1, true)]);
    }

    #[test]
    fn round_labels_are_recognised_and_nothing_else() {
        assert_eq!(labelled("scale-out", 2, 1), "scale-out");
        assert_eq!(labelled("scale-out", 2, 3), "scale-out #2");
        assert!(is_round_of("scale-out #2", "scale-out"));
        assert!(is_round_of("scale-out", "scale-out"));
        assert!(!is_round_of("scale-out-1 #2", "scale-out"));
        assert!(!is_round_of("scale-out-1", "scale-out"));
    }

    #[test]
    fn each_round_is_compared_with_its_own_base_and_the_median_is_noted_last() {
        let mut rs = vec![
            result("base #1", 100.0),
            result("top #1", 90.0),
            result("top #2", 120.0),
            result("base #2", 100.0),
            result("base #3", 200.0),
            result("top #3", 200.0),
        ];
        compare_rounds(&mut rs, "base", "top", 3, "the base");
        assert_eq!(rs[1].notes, ["90.0% of base #1's (the base) throughput"]);
        assert_eq!(rs[2].notes, ["120.0% of base #2's (the base) throughput"]);
        assert_eq!(
            rs[5].notes,
            [
                "100.0% of base #3's (the base) throughput",
                "median over 3 rounds: 100.0% of the base (per round: 90.0%, 120.0%, 100.0%)"
            ]
        );
        assert!(rs[0].notes.is_empty() && rs[3].notes.is_empty());
    }
}
