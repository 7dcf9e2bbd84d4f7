//! What the machine is and does: its description for the results, CPU time
//! from `/proc`, Postgres commit counters, and the pgbench baseline.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use anyhow::Context;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde::Serialize;

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Host name (also in the result file names).
    pub hostname: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Memory, in GiB.
    pub memory_gib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `SELECT version()` of the server.
    pub postgres: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Machine {
    /// Describes this machine and the server behind `db`.
    pub async fn describe(db: &DatabaseConnection) -> anyhow::Result<Self> {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_kib: u64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let postgres = scalar_text(db, "SELECT version()").await?;
        Ok(Machine {
            hostname: read("/proc/sys/kernel/hostname").trim().to_owned(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: memory_kib.div_ceil(1024 * 1024),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            postgres,
        })
    }
}

/// CPU time used so far, in clock ticks (`USER_HZ`, 100 per second on
/// Linux): the whole machine's busy time and this process's own.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    machine_busy: u64,
    process: u64,
}

/// Clock ticks per second of `/proc` counters.
const TICKS_PER_SECOND: u64 = 100;

impl CpuSample {
    /// Reads the counters now.
    pub fn now() -> Self {
        // cpu  user nice system idle iowait irq softirq steal ...
        let stat = read("/proc/stat");
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        let machine_busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
        CpuSample {
            machine_busy,
            process: stat_ticks(&read("/proc/self/stat")),
        }
    }

    /// CPU milliseconds between `self` and `later`: (machine, this process).
    pub fn ms_until(self, later: CpuSample) -> (u64, u64) {
        let ms = |ticks: u64| ticks * 1000 / TICKS_PER_SECOND;
        (
            ms(later.machine_busy.saturating_sub(self.machine_busy)),
            ms(later.process.saturating_sub(self.process)),
        )
    }
}

/// User plus system CPU ticks of a `/proc/<pid>/stat` (or
/// `task/<tid>/stat`) line: its 14th and 15th fields, the 12th and 13th
/// after the parenthesised command name (which may hold spaces). Until
/// 2026-11-30 the harness read the 13th and 14th, so its own CPU
/// (`process_cpu_ms_per_saga`) left out its system time.
fn stat_ticks(stat: &str) -> u64 {
    stat_field(stat, 11) + stat_field(stat, 12)
}

/// The `i`th number after the parenthesised command name of a `stat` line
/// (0 is the state; 0 if missing).
fn stat_field(stat: &str, i: usize) -> u64 {
    stat.rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or_default()
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

/// CPU milliseconds the JIT compiler threads of a Kafka broker running on
/// this machine have used so far, or `None` if no broker runs here (a
/// remote one, say). A broker's JVM compiles its hot paths for minutes
/// after it starts, on this machine's cores (bench/README finding 32).
pub fn broker_jit_ms() -> Option<u64> {
    let broker = std::fs::read_dir("/proc").ok()?.flatten().find(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.first().is_some_and(|a| a.ends_with(b"java"))
            && args.iter().any(|a| *a == b"kafka.Kafka")
    })?;
    let ticks: u64 = std::fs::read_dir(broker.path().join("task"))
        .ok()?
        .flatten()
        .filter(|t| {
            let comm = read(&format!("{}/comm", t.path().display()));
            comm.starts_with("C2 Compiler") || comm.starts_with("C1 Compiler")
        })
        .map(|t| stat_ticks(&read(&format!("{}/stat", t.path().display()))))
        .sum();
    Some(ticks * 1000 / TICKS_PER_SECOND)
}

/// Who on this machine used the CPU over a run, by kind of process: each
/// Postgres backend under its `application_name` (sagaflow's pools name
/// their roles), Postgres's own processes under their `backend_type`, the
/// Kafka broker, each `sagaflow` process under its command, and this
/// harness. A machine-wide figure says how much; this says whose, which is
/// what comparing layouts (scale-out) needs.
#[derive(Debug, Default)]
pub struct ProcessCpu {
    seen: HashMap<u32, Seen>,
    /// Processes whose pid a later process took over during the run.
    gone: Vec<Seen>,
    started: bool,
}

#[derive(Debug)]
struct Seen {
    label: String,
    /// Whether the label may still change: a Postgres process that
    /// `pg_stat_activity` did not list yet.
    provisional: bool,
    /// When the process started (`/proc/<pid>/stat` field 22), which tells
    /// a reused pid from the process that had it before.
    start: u64,
    first: u64,
    last: u64,
}

/// A Postgres process's label from a `pg_stat_activity` row. A role
/// without `pg_read_all_stats` sees no `backend_type` for Postgres's own
/// processes (the WAL writer, autovacuum) and other roles' sessions.
pub fn backend_label(backend_type: &str, application_name: &str) -> String {
    match (backend_type, application_name) {
        ("", _) => "postgres: background or another role's".to_owned(),
        ("client backend", "") => "postgres: unnamed client".to_owned(),
        ("client backend", app) => format!("postgres: {app}"),
        (kind, _) => format!("postgres: {kind}"),
    }
}

impl ProcessCpu {
    /// Reads every process's CPU now. `backends` labels Postgres's
    /// processes by pid ([`backend_label`]). The first call is the
    /// baseline; a process first seen later counts from its start. CPU a
    /// process uses after its last reading is not counted, nor is a
    /// process that lives between two readings.
    pub fn sample(&mut self, backends: &HashMap<u32, String>) {
        let me = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = read(&format!("/proc/{pid}/stat"));
            if stat.is_empty() {
                continue;
            }
            self.observe(pid, &stat, backends.get(&pid), || classify(pid, me, &stat));
        }
        self.started = true;
    }

    /// One process's reading: its `stat` line, its label from
    /// `pg_stat_activity` if listed there, and how to label it if not.
    fn observe(
        &mut self,
        pid: u32,
        stat: &str,
        listed: Option<&String>,
        label: impl FnOnce() -> (String, bool),
    ) {
        let ticks = stat_ticks(stat);
        let start = stat_field(stat, 19);
        match self.seen.get_mut(&pid) {
            Some(s) if s.start == start => {
                s.last = ticks;
                if let (true, Some(l)) = (s.provisional, listed) {
                    s.label = l.clone();
                    s.provisional = false;
                }
            }
            _ => {
                let (label, provisional) = match listed {
                    Some(l) => (l.clone(), false),
                    None => label(),
                };
                let first = if self.started { 0 } else { ticks };
                let new = Seen {
                    label,
                    provisional,
                    start,
                    first,
                    last: ticks,
                };
                if let Some(old) = self.seen.insert(pid, new) {
                    self.gone.push(old);
                }
            }
        }
    }

    /// CPU milliseconds by label between the first sample and the last.
    pub fn ms(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for s in self.seen.values().chain(&self.gone) {
            let ms = s.last.saturating_sub(s.first) * 1000 / TICKS_PER_SECOND;
            if ms > 0 {
                *by.entry(s.label.clone()).or_default() += ms;
            }
        }
        by
    }
}

/// What a process `pg_stat_activity` does not list is, from its `/proc`
/// entries: (label, provisional).
fn classify(pid: u32, me: u32, stat: &str) -> (String, bool) {
    if pid == me {
        return ("harness (API, load, in-process roles)".to_owned(), false);
    }
    let comm = stat
        .split_once('(')
        .and_then(|(_, r)| r.rsplit_once(')'))
        .map(|(c, _)| c)
        .unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    command_label(comm, &args)
}

/// The label of a process that is not a listed Postgres backend:
/// (label, provisional).
fn command_label(comm: &str, args: &[String]) -> (String, bool) {
    if comm == "postgres" {
        // The postmaster, or a backend that pg_stat_activity lists later.
        return ("postgres: other".to_owned(), true);
    }
    if args.first().is_some_and(|a| a.ends_with("java")) && args.iter().any(|a| a == "kafka.Kafka")
    {
        return ("kafka broker".to_owned(), false);
    }
    if comm == "sagaflow" {
        let command: Vec<&str> = args
            .iter()
            .skip(1)
            .take_while(|a| !a.starts_with('-'))
            .map(String::as_str)
            .collect();
        return (format!("sagaflow {}", command.join(" ")), false);
    }
    ("other".to_owned(), false)
}

/// One text value.
pub async fn scalar_text(db: &DatabaseConnection, sql: &str) -> anyhow::Result<String> {
    let row = db
        .query_one(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .context("no row")?;
    Ok(row.try_get_by_index(0)?)
}

/// One integer value (on a connection or inside a transaction).
pub async fn scalar_i64<C: ConnectionTrait>(db: &C, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one(Statement::from_string(db.get_database_backend(), sql))
        .await?
        .context("no row")?;
    Ok(row.try_get_by_index(0)?)
}

/// Committed transactions of the current database so far. Backends report
/// theirs when they go idle or exit, so read it after the engine stopped.
pub async fn commits(db: &DatabaseConnection) -> anyhow::Result<i64> {
    scalar_i64(
        db,
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .await
}

/// pgbench's built-in simple-update script on the same server, as the
/// run's yardstick: commits per second with 8 clients and with 1.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Seconds each pgbench run lasted.
    pub seconds: u32,
    /// Transactions per second, 8 clients (2 threads).
    pub tps_8_clients: f64,
    /// Transactions per second, 1 client.
    pub tps_1_client: f64,
}

fn pgbench_binary() -> anyhow::Result<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: is Debian's postgresql installed?")?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("pgbench not found under /usr/lib/postgresql")
}

/// Runs pgbench (initialising its tables first) against `url`.
pub fn pgbench(url: &str, seconds: u32) -> anyhow::Result<Baseline> {
    let bin = pgbench_binary()?;
    let init = Command::new(&bin)
        .args(["-i", "-q", "-s", "1", url])
        .output()
        .context("run pgbench -i")?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let run = |clients: &str, threads: &str| -> anyhow::Result<f64> {
        let out = Command::new(&bin)
            .args(["-b", "simple-update", "-c", clients, "-j", threads, "-T"])
            .arg(seconds.to_string())
            .arg(url)
            .output()
            .context("run pgbench")?;
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .context("no tps line in pgbench's output")
    };
    Ok(Baseline {
        seconds,
        tps_8_clients: run("8", "2")?,
        tps_1_client: run("1", "1")?,
    })
}

#[cfg(test)]
mod stat_tests {
    use super::{backend_label, command_label, stat_ticks, ProcessCpu};

    /// A `stat` line with `ticks` of user time and a start time.
    fn stat(ticks: u64, start: u64) -> String {
        format!("1 (x y) S 1 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 {start} 0")
    }

    #[test]
    fn process_cpu_counts_from_the_baseline_and_survives_a_reused_pid() {
        let mut cpu = ProcessCpu::default();
        let named = |l: &str| (l.to_owned(), false);
        cpu.observe(10, &stat(100, 7), None, || named("a"));
        cpu.observe(30, &stat(5, 9), None, || {
            ("postgres: other".to_owned(), true)
        });
        cpu.started = true;
        cpu.observe(10, &stat(150, 7), None, || named("never asked"));
        // Started during the run: all of its CPU counts.
        cpu.observe(20, &stat(30, 8), None, || named("b"));
        // Listed by pg_stat_activity now: relabelled.
        let listed = "postgres: sagaflow worker engine".to_owned();
        cpu.observe(30, &stat(25, 9), Some(&listed), || named("never asked"));
        // Pid 10 exits and a new process takes the pid over.
        cpu.observe(10, &stat(5, 99), None, || named("c"));
        let ms = cpu.ms();
        assert_eq!(ms.get("a"), Some(&500));
        assert_eq!(ms.get("b"), Some(&300));
        assert_eq!(ms.get("c"), Some(&50));
        assert_eq!(ms.get("postgres: sagaflow worker engine"), Some(&200));
        assert_eq!(ms.get("postgres: other"), None);
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn processes_are_labelled_by_role() {
        assert_eq!(
            command_label(
                "sagaflow",
                &args(&["/x/sagaflow", "participant", "funds", "--database-url", "u"])
            ),
            ("sagaflow participant funds".to_owned(), false)
        );
        assert_eq!(
            command_label(
                "java",
                &args(&[
                    "/usr/bin/java",
                    "-Xmx512m",
                    "-cp",
                    "libs/*",
                    "kafka.Kafka",
                    "p"
                ])
            ),
            ("kafka broker".to_owned(), false)
        );
        assert_eq!(
            command_label("postgres", &args(&["postgres: sagaflow db idle"])),
            ("postgres: other".to_owned(), true)
        );
        assert_eq!(command_label("bash", &args(&["bash"])).0, "other");
        assert_eq!(
            backend_label("client backend", "sagaflow worker+replies engine"),
            "postgres: sagaflow worker+replies engine"
        );
        assert_eq!(
            backend_label("client backend", ""),
            "postgres: unnamed client"
        );
        assert_eq!(
            backend_label("", ""),
            "postgres: background or another role's"
        );
        assert_eq!(backend_label("walwriter", "ignored"), "postgres: walwriter");
    }

    #[test]
    fn stat_ticks_adds_user_and_system_time_after_a_command_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt
        // cminflt majflt cmajflt utime stime ...
        let line = "4242 (C2 CompilerThre) S 1 1 1 0 -1 4194368 10 20 30 40 700 55 0 0 20 0";
        assert_eq!(stat_ticks(line), 755);
        assert_eq!(stat_ticks(""), 0);
    }
}
