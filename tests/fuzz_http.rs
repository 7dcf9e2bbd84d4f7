//! Hostile HTTP input: schemathesis (from PyPI, installed by
//! `scripts/test.sh` into `.sagaflow/venv`) fuzzes every operation of
//! `/openapi.json` against a whole sagaflow on the real PostgreSQL and
//! Kafka, with every check on: no 5xx, no response that breaks the spec, no
//! schema-valid request refused, no schema-violating one accepted.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{TestApp, ADMIN_TOKEN};

/// A bound on the whole schemathesis run (it takes ~15 s here).
const BOUND: Duration = Duration::from_secs(300);

fn schemathesis() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".sagaflow/venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test.sh, which installs schemathesis into .sagaflow/venv",
        bin.display()
    );
    bin
}

/// The schemathesis configuration: the one expectation the spec cannot
/// state, and real resources so the fuzzing gets past the 404s.
fn config(order_no: &str) -> String {
    format!(
        r#"
# POST /orders answers 422 naming `user_id` when the user has no account:
# a business rule over the database, which no schema can express. Every
# other operation keeps schemathesis' default expectations.
[[operations]]
include-path = "/orders"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-path = "/orders/{{order_no}}"
parameters = {{ "path.order_no" = "{order_no}" }}

[[operations]]
include-path = "/accounts/{{user_id}}"
parameters = {{ "path.user_id" = 1 }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_server_error_and_no_spec_violation() {
    let bin = schemathesis();
    let app = TestApp::start().await;
    app.funded_account(1, "1000.00").await;
    let (status, order) = app.place_order(1, "10.00", None).await;
    assert_eq!(status, 201, "{order}");
    let order_no = order["order_no"].as_str().unwrap().to_owned();
    assert_eq!(
        app.settled_order(&order_no, Duration::from_secs(30)).await["status"],
        "PAID"
    );

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{}", app.db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("schemathesis.toml");
    std::fs::write(&cfg, config(&order_no)).unwrap();
    // A new seed each run, printed, so that a failure can be replayed:
    // SAGAFLOW_FUZZ_SEED=<seed> runs that seed again.
    let mut seed = match std::env::var("SAGAFLOW_FUZZ_SEED") {
        Ok(s) => s.parse().expect("SAGAFLOW_FUZZ_SEED must be a u32"),
        Err(_) => uuid::Uuid::new_v4().as_u128() as u32,
    };
    let (mut status, mut stdout) = run_schemathesis(&bin, &cfg, &dir, &app.base, seed).await;
    // CPython 3.11's ast module can fail with "AST constructor recursion
    // depth mismatch" (python/cpython#106905) when hypothesis parses
    // schemathesis's source to describe a lambda: an error of the tool,
    // reported as a Runtime Error with no finding about sagaflow. Only
    // then, run once more with another seed; any check failure stands.
    if !status.success() && tool_crashed(&stdout) {
        eprintln!("schemathesis seed {seed} crashed inside CPython's ast module; running it again");
        seed = seed.wrapping_add(1);
        (status, stdout) = run_schemathesis(&bin, &cfg, &dir, &app.base, seed).await;
    }
    let summary: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    eprintln!("schemathesis seed {seed}:\n{}", summary.join("\n"));
    assert!(
        status.success(),
        "schemathesis found problems (seed {seed}; replay with SAGAFLOW_FUZZ_SEED={seed}):\n{stdout}"
    );
    assert!(
        stdout.contains("No issues found") || stdout.contains("passed"),
        "schemathesis printed no verdict:\n{stdout}"
    );
    app.stop().await;
}

/// Whether a schemathesis run failed only because the tool itself crashed
/// on CPython's ast bug: errors reported, no check failure.
fn tool_crashed(stdout: &str) -> bool {
    stdout.contains("AST constructor recursion depth mismatch") && !stdout.contains("Failures:")
}

/// Runs schemathesis with `seed` against `base` (bounded by `BOUND`);
/// its exit status and its output.
async fn run_schemathesis(
    bin: &std::path::Path,
    cfg: &std::path::Path,
    dir: &std::path::Path,
    base: &str,
    seed: u32,
) -> (std::process::ExitStatus, String) {
    let log = dir.join(format!("schemathesis-{seed}.log"));
    let mut child = std::process::Command::new(bin)
        .arg("--config-file")
        .arg(cfg)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", "all"])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--max-examples", "100", "--workers", "2"])
        .args(["--seed", &seed.to_string()])
        .arg("--report-dir")
        .arg(dir.join(format!("report-{seed}")))
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run schemathesis");
    let until = tokio::time::Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > until {
            child.kill().ok();
            child.wait().ok();
            panic!("schemathesis ran past {BOUND:?}; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = std::fs::read(&log).unwrap();
    (status, String::from_utf8_lossy(&out).into_owned())
}
