//! The benchmark still runs end to end (tiny settings, debug build): every server kind starts,
//! serves, drains and exits, and the report has its sections. The figures themselves are made
//! with `bash scripts/bench.sh`, not here.
#![cfg(unix)]

use std::process::Command;

#[test]
fn the_benchmark_runs_every_server_kind_end_to_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck-bench"))
        .args([
            "--runs",
            "1",
            "--duration-ms",
            "100",
            "--conns",
            "4",
            "--idle",
            "20",
            "--silent",
            "10",
            "--only",
            "1,2,3",
            "--server-bin",
            env!("CARGO_BIN_EXE_bench-server"),
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in [
        "## 1. Throughput",
        "## 2. Exit lag",
        "## 3. Idle shutdown",
        "## 6. Memory",
    ] {
        assert!(report.contains(section), "{section} missing:\n{report}");
    }
    for kind in [
        "| hyper |",
        "| axum |",
        "| lameduck |",
        "| tonic |",
        "| lameduck-grpc |",
    ] {
        assert!(report.contains(kind), "{kind} missing:\n{report}");
    }
    // Stalled clients: lameduck exits, where the others are killed at the cap.
    let stalled = report
        .lines()
        .find(|l| l.contains("stalled halfway") && l.contains("| lameduck |"))
        .unwrap_or_else(|| panic!("no stalled-client row for lameduck:\n{report}"));
    assert!(!stalled.contains("killed"), "{stalled}");
}

#[test]
fn the_deploy_benchmark_upgrades_lameduck_refusing_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck-bench"))
        .args(["--runs", "1", "--only", "7"])
        .args(["--server-bin", env!("CARGO_BIN_EXE_bench-server")])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("## 7. A deploy under load"), "{report}");
    let upgrade = report
        .lines()
        .find(|l| l.starts_with("| lameduck | upgrade in place"))
        .unwrap_or_else(|| panic!("no lameduck upgrade row:\n{report}"));
    let cells: Vec<&str> = upgrade.split('|').map(str::trim).collect();
    let (ok, refused, failed) = (cells[3], cells[4], cells[5]);
    assert!(ok.parse::<u64>().unwrap() > 0, "{upgrade}");
    assert_eq!(
        (refused, failed),
        ("0", "0"),
        "an upgrade refuses and fails nothing: {upgrade}"
    );
    assert!(
        report.contains("| lameduck | restart"),
        "the restart it is compared with:\n{report}"
    );
}
