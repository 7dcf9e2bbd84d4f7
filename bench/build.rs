//! Records the commit the harness is built from. A result must name the
//! code that ran, and the tree a binary runs in need not be the one it
//! was built from: an A/B of two builds runs a copied binary in whatever
//! tree is checked out (bench/README finding 31's files said so wrongly
//! until their `commit` was corrected by hand).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn main() {
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let built_from = if dirty { format!("{head}-dirty") } else { head };
    println!("cargo:rustc-env=SAGAFLOW_BENCH_BUILT_FROM={built_from}");
    // Built again when HEAD moves, something is staged or committed, or a
    // source the benchmarked code is made of changes.
    let top = git(&["rev-parse", "--show-toplevel"]);
    let git_dir = git(&["rev-parse", "--absolute-git-dir"]);
    if let Some(dir) = git_dir {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
    }
    if let Some(top) = top {
        for src in [
            "src",
            "api/src",
            "worker/src",
            "workflows/src",
            "entity/src",
            "migration/src",
            "bench/src",
        ] {
            println!("cargo:rerun-if-changed={top}/{src}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
