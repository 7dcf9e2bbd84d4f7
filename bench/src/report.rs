//! Results: the JSON written under `bench/results/`, the SVG chart next to
//! it, and the summary table printed at the end of a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::system::{Baseline, Machine};

/// Order-accepted → done latency, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// (percentile, ms) points for the distribution chart.
    pub distribution: Vec<(f64, f64)>,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn from_micros(h: &hdrhistogram::Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let distribution = [
            0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
        ]
        .iter()
        .map(|p| (*p, ms(p / 100.0)))
        .collect();
        Some(Latency {
            p50: ms(0.50),
            p95: ms(0.95),
            p99: ms(0.99),
            max: h.max() as f64 / 1000.0,
            distribution,
        })
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario name (`order-e2e`, ...).
    pub name: String,
    /// What was run, in words.
    pub description: String,
    /// The knobs it ran with.
    pub params: serde_json::Value,
    /// Sagas that reached a terminal state.
    pub sagas: u64,
    /// From the first saga's start to the last one's end, seconds.
    pub seconds: f64,
    /// `sagas / seconds`.
    pub sagas_per_second: f64,
    /// `sagas_per_second` over pgbench's 8-client commits/s.
    pub per_pgbench_commit: Option<f64>,
    /// Latency from accepted to done, where the scenario has one.
    pub latency_ms: Option<Latency>,
    /// Postgres commits of the run's database per saga.
    pub commits_per_saga: f64,
    /// Machine-wide busy CPU per saga (the engine, Postgres, Kafka, the
    /// load generator), milliseconds.
    pub cpu_ms_per_saga: f64,
    /// This process's CPU (engine and load generator) per saga, ms.
    pub process_cpu_ms_per_saga: f64,
    /// `cpu_ms_per_saga` by kind of process (`system::ProcessCpu`): each
    /// Postgres backend under its `application_name`, Postgres's own
    /// processes, the broker, each `sagaflow` process, this harness.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_ms_per_saga_by_process: BTreeMap<String, f64>,
    /// (seconds since start, sagas finished per second) buckets.
    pub timeline: Vec<(f64, f64)>,
    /// Correctness checks of the run and their outcome.
    pub checks: Vec<Check>,
    /// Anything worth knowing about the figure.
    pub notes: Vec<String>,
    /// The table's dead tuples and the xmin horizon at the end of the run,
    /// where the scenario looks at them (held-xmin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon: Option<Horizon>,
}

impl ScenarioResult {
    /// `cpu_ms_per_saga_by_process` on one line, largest first, leaving
    /// out what is under 0.01 ms; `None` if it was not measured.
    pub fn cpu_by_process_line(&self) -> Option<String> {
        let mut by: Vec<(&String, &f64)> = self
            .cpu_ms_per_saga_by_process
            .iter()
            .filter(|(_, ms)| **ms >= 0.01)
            .collect();
        if by.is_empty() {
            return None;
        }
        by.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        let parts: Vec<String> = by.iter().map(|(k, ms)| format!("{k} {ms:.2}")).collect();
        Some(parts.join(", "))
    }
}

/// What vacuum could and could not clean up by the end of a run, and the
/// claim statement's own figures (held-xmin).
#[derive(Debug, Clone, Serialize)]
pub struct Horizon {
    /// Whether another session held a transaction open through the run.
    pub held: bool,
    /// Waves of sagas inserted (each once the last was drained).
    pub waves: u64,
    /// Claim statements run, and how many of them found nothing.
    pub claims: u64,
    /// Claims that returned no saga.
    pub empty_claims: u64,
    /// `pg_stat_user_tables.n_dead_tup` of `saga_instances`.
    pub dead_tuples: i64,
    /// `n_live_tup` of `saga_instances`.
    pub live_tuples: i64,
    /// Autovacuum runs on `saga_instances` during the run.
    pub autovacuums: i64,
    /// Heap size of `saga_instances`, bytes.
    pub table_bytes: i64,
    /// Size of the claim's partial index `saga_instances_due`, bytes.
    pub due_index_bytes: i64,
    /// Oldest `age(backend_xmin)` / `age(backend_xid)` of the other
    /// sessions on the database, in transactions.
    pub xmin_age_xids: i64,
    /// `now() - xact_start` of the oldest open transaction, seconds.
    pub oldest_xact_s: f64,
    /// `n_dead_tup` right after a manual `VACUUM saga_instances` (the dead
    /// tuples vacuum found but could not remove), labelled with when it
    /// ran.
    pub dead_after_vacuum: Vec<(String, i64)>,
    /// `EXPLAIN (ANALYZE, BUFFERS)` of the claim (with one batch of fresh
    /// sagas due, rolled back), labelled with when it ran.
    pub explain: Vec<(String, String)>,
}

/// A correctness check after a run.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// Whether it held.
    pub ok: bool,
    /// The figures behind it.
    pub detail: String,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// When it started (UTC, RFC 3339).
    pub started_at: String,
    /// The commit the harness (and so the engine it runs) was built from,
    /// `-dirty` if the tree had changes then.
    pub commit: String,
    /// The commit of the tree it ran in, when that is another one (a
    /// copied binary): its `sagaflow` processes are the sibling binary's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ran_in_tree: Option<String>,
    /// Where it ran.
    pub machine: Machine,
    /// The same server's pgbench figures, measured in this run.
    pub baseline: Option<Baseline>,
    /// The scenarios, in the order they ran.
    pub scenarios: Vec<ScenarioResult>,
    /// The command line.
    pub command: String,
}

impl Run {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let w = self
            .scenarios
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(14);
        let _ = writeln!(
            out,
            "{:<w$} {:>8} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  checks",
            "scenario",
            "sagas",
            "seconds",
            "sagas/s",
            "÷pgbench",
            "p50 ms",
            "p99 ms",
            "max ms",
            "commits",
            "cpu ms"
        );
        for s in &self.scenarios {
            let lat = |f: fn(&Latency) -> f64| {
                s.latency_ms
                    .as_ref()
                    .map_or("—".to_owned(), |l| format!("{:.1}", f(l)))
            };
            let ok = s.checks.iter().all(|c| c.ok);
            let _ = writeln!(
                out,
                "{:<w$} {:>8} {:>9.2} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9.2} {:>9.2}  {}",
                s.name,
                s.sagas,
                s.seconds,
                s.sagas_per_second,
                s.per_pgbench_commit
                    .map_or("—".to_owned(), |r| format!("{r:.3}")),
                lat(|l| l.p50),
                lat(|l| l.p99),
                lat(|l| l.max),
                s.commits_per_saga,
                s.cpu_ms_per_saga,
                if ok { "ok" } else { "FAILED" }
            );
        }
        if let Some(b) = &self.baseline {
            let _ = writeln!(
                out,
                "baseline: pgbench simple-update {} s: {:.0} commits/s with 8 clients, {:.0} with 1",
                b.seconds, b.tps_8_clients, b.tps_1_client
            );
        }
        out
    }

    /// The chart: per scenario, throughput over time and the latency
    /// distribution.
    pub fn svg(&self) -> String {
        const W: f64 = 960.0;
        const ROW: f64 = 250.0;
        const TOP: f64 = 60.0;
        let h = TOP + ROW * self.scenarios.len().max(1) as f64 + 20.0;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="20" y="24" font-size="16" font-weight="bold">sagaflow bench · {} · {}</text>
<text x="20" y="44" fill="#555">{} CPUs, {} · commit {}{}</text>
"##,
            esc(&self.machine.hostname),
            esc(&self.started_at),
            self.machine.cpus,
            esc(&self.machine.cpu_model),
            esc(&self.commit),
            self.baseline.as_ref().map_or(String::new(), |b| format!(
                " · pgbench simple-update: {:.0} commits/s (8 clients)",
                b.tps_8_clients
            )),
        );
        for (i, s) in self.scenarios.iter().enumerate() {
            let y = TOP + ROW * i as f64;
            let title = format!(
                "{} — {:.0} sagas/s{}",
                s.name,
                s.sagas_per_second,
                s.latency_ms
                    .as_ref()
                    .map_or(String::new(), |l| format!(", p99 {:.1} ms", l.p99))
            );
            let _ = writeln!(
                svg,
                r##"<text x="20" y="{}" font-size="14" font-weight="bold">{}</text>"##,
                y + 18.0,
                esc(&title)
            );
            let panel = Panel {
                x: 70.0,
                y: y + 35.0,
                w: 370.0,
                h: 170.0,
            };
            panel.plot(
                &mut svg,
                &s.timeline,
                "seconds since start",
                "sagas/s",
                "#1f6feb",
                Scale::Linear,
            );
            let right = Panel { x: 560.0, ..panel };
            match &s.latency_ms {
                Some(l) => right.plot(
                    &mut svg,
                    &l.distribution,
                    "percentile",
                    "latency ms",
                    "#d1242f",
                    Scale::Percentile,
                ),
                None => {
                    let _ = writeln!(
                        svg,
                        r##"<text x="{}" y="{}" fill="#777">no per-saga latency: a backlog drained as fast as it goes</text>"##,
                        right.x,
                        right.y + right.h / 2.0
                    );
                }
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// How a panel spaces its x axis.
#[derive(Debug, Clone, Copy)]
enum Scale {
    Linear,
    /// Percentiles, spread as -log10(1 - p/100) so that the tail shows.
    Percentile,
}

#[derive(Debug, Clone, Copy)]
struct Panel {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Panel {
    fn plot(
        &self,
        svg: &mut String,
        points: &[(f64, f64)],
        x_label: &str,
        y_label: &str,
        colour: &str,
        scale: Scale,
    ) {
        let tx = |x: f64| match scale {
            Scale::Linear => x,
            Scale::Percentile => -(1.0 - (x / 100.0).min(0.9999)).log10(),
        };
        let xs: Vec<f64> = points.iter().map(|p| tx(p.0)).collect();
        let (x0, x1) = (
            xs.iter().copied().fold(f64::INFINITY, f64::min),
            xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let y1 = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
        let span = if x1 > x0 { x1 - x0 } else { 1.0 };
        let px = |x: f64| self.x + (x - x0) / span * self.w;
        let py = |y: f64| self.y + self.h - y / y1 * self.h;
        let _ = writeln!(
            svg,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            self.x, self.y, self.w, self.h
        );
        for k in 0..=4 {
            let v = y1 * f64::from(k) / 4.0;
            let _ = writeln!(
                svg,
                r##"<line x1="{x}" x2="{x2}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{tx}" y="{ty}" text-anchor="end" fill="#555">{label}</text>"##,
                x = self.x,
                x2 = self.x + self.w,
                y = py(v),
                tx = self.x - 6.0,
                ty = py(v) + 4.0,
                label = short(v)
            );
        }
        let ticks: Vec<(f64, String)> = match scale {
            Scale::Linear => (0..=4)
                .map(|k| {
                    let v = x0 + span * f64::from(k) / 4.0;
                    (v, short(v))
                })
                .collect(),
            Scale::Percentile => [50.0, 90.0, 99.0, 99.9, 99.99]
                .iter()
                .map(|p| (tx(*p), format!("p{p}")))
                .filter(|(v, _)| *v >= x0 && *v <= x1)
                .collect(),
        };
        for (v, label) in ticks {
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
                px(v),
                self.y + self.h + 15.0,
                esc(&label)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#333">{}</text><text x="{}" y="{}" fill="#333">{}</text>"##,
            self.x + self.w / 2.0,
            self.y + self.h + 30.0,
            esc(x_label),
            self.x,
            self.y - 6.0,
            esc(y_label)
        );
        let path: Vec<String> = points
            .iter()
            .zip(&xs)
            .map(|(p, x)| format!("{:.1},{:.1}", px(*x), py(p.1)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
    }
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_by_process_lists_the_largest_first_and_drops_crumbs() {
        let mut r = ScenarioResult {
            name: "x".into(),
            description: String::new(),
            params: serde_json::Value::Null,
            sagas: 1,
            seconds: 1.0,
            sagas_per_second: 1.0,
            per_pgbench_commit: None,
            latency_ms: None,
            commits_per_saga: 0.0,
            cpu_ms_per_saga: 0.0,
            process_cpu_ms_per_saga: 0.0,
            cpu_ms_per_saga_by_process: BTreeMap::new(),
            timeline: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            horizon: None,
        };
        assert_eq!(r.cpu_by_process_line(), None);
        r.cpu_ms_per_saga_by_process = [
            ("kafka broker".to_owned(), 0.5),
            ("postgres: walwriter".to_owned(), 0.004),
            ("sagaflow worker".to_owned(), 0.25),
            ("postgres: sagaflow worker+replies engine".to_owned(), 0.56),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            r.cpu_by_process_line().unwrap(),
            "postgres: sagaflow worker+replies engine 0.56, kafka broker 0.50, sagaflow worker 0.25"
        );
    }
}
