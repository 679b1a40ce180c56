//! The harness cannot rot: `rebased-bench --quick` runs every scenario at
//! CI sizes against the real registry and the real binary, and each
//! scenario must produce its figures. Timings are not asserted; behaviour
//! is (one manifest request per base per cycle, no layer bytes uploaded by
//! a native rebuild, one build per webhook push, a restart that reads no
//! ledger back, a watchdog never starved by a registry that does not
//! answer; the opt-in `engines` scenario: every image rebuilt, spread over
//! each engine).

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The `rebased` binary of this build (built if missing).
fn rebased_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_rebased-bench"));
    let bin = bench.parent().unwrap().join("rebased");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "-p", "rebased", "--bin", "rebased"])
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p rebased failed");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

fn finite(v: &Value) -> bool {
    v.as_f64().is_some_and(f64::is_finite)
}

#[test]
fn every_scenario_produces_its_figures() {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("bench.json");
    let run = Command::new(env!("CARGO_BIN_EXE_rebased-bench"))
        .arg("--quick")
        .arg("--json")
        .arg(&json)
        .env("REBASED_BIN", rebased_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "rebased-bench --quick failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    // 1. Fan-in: exactly one manifest request per base per cycle.
    let fleet = &r["fanin"][0];
    let bases = fleet["bases"].as_u64().unwrap();
    let images = fleet["images"].as_u64().unwrap();
    let per_cycle = fleet["manifest_requests_per_cycle"].as_array().unwrap();
    assert!(!per_cycle.is_empty(), "{fleet}");
    for n in per_cycle {
        assert_eq!(
            n.as_u64(),
            Some(bases),
            "manifest requests per cycle: {fleet}"
        );
    }
    assert!(finite(&fleet["cycle_wall_ms_median"]), "{fleet}");
    assert!(fleet["peak_rss_mib"].as_f64().unwrap() > 0.0, "{fleet}");

    // 2. The peer: one skopeo inspect per image, at least a manifest each.
    let peer = &fleet["peer"];
    assert!(
        peer["manifest_requests_per_cycle"].as_f64().unwrap() >= images as f64,
        "{peer}"
    );
    assert!(
        finite(&peer["wall_s"]) && finite(&peer["requests_ratio"]),
        "{peer}"
    );

    // 3. Webhook: every push became one successful build, each measured.
    let hook = &r["webhook"];
    assert_eq!(hook["jobs"], hook["pushes"], "{hook}");
    assert_eq!(hook["failed_builds"].as_u64(), Some(0), "{hook}");
    assert!(finite(&hook["p50_ms"]) && finite(&hook["p99_ms"]), "{hook}");

    // 4. Rebuild: the native backend uploads no layer bytes; both publish.
    let rebuild = &r["rebuild"];
    for run in rebuild["native"]["rebuilds"].as_array().unwrap() {
        assert_eq!(run["new_layer_bytes"].as_u64(), Some(0), "{rebuild}");
        assert_eq!(
            run["log_layer_bytes_uploaded"].as_u64(),
            Some(0),
            "{rebuild}"
        );
        // The layer cache was used: the sources were not gzipped again.
        let how = run["layer_cache"].as_str().unwrap();
        assert!(how == "stat" || how == "content", "{rebuild}");
    }
    for backend in ["native", "buildah"] {
        assert!(
            finite(&rebuild[backend]["decision_to_published_s_median"]),
            "{rebuild}"
        );
    }

    // 5. API: both paths answered under load, without errors.
    for path in ["/v1/status", "/v1/images"] {
        let a = &r["api"][path];
        assert!(a["requests_per_s"].as_f64().unwrap() > 0.0, "{a}");
        assert_eq!(a["errors"].as_u64(), Some(0), "{path}: {a}");
        assert!(finite(&a["p99_ms"]), "{a}");
    }

    // 6. Idle: CPU and RSS measured.
    let idle = &r["idle"];
    assert!(finite(&idle["cpu_percent"]), "{idle}");
    assert!(idle["rss_mib_max"].as_f64().unwrap() > 0.0, "{idle}");

    // 7. Start-up: the first start reads every ledger back, a restart none
    // (it is in the store); both reach their first round.
    let start = &r["startup"];
    assert_eq!(start["imported_first_start"], start["images"], "{start}");
    assert!(finite(&start["first_start_s"]), "{start}");
    let restarts = start["restarts"].as_array().unwrap();
    assert!(!restarts.is_empty(), "{start}");
    for run in restarts {
        assert_eq!(run["imported"].as_u64(), Some(0), "{start}");
        assert!(finite(&run["wall_s"]), "{start}");
    }

    // 8. A first start against a registry that never answers: the watchdog
    // is fed all along (no gap reaches WATCHDOG_USEC, which is when systemd
    // would kill the daemon), the first round comes, and a stop is taken
    // at once, during the import too (not after the registry's 30 s
    // timeout).
    let dog = &r["watchdog"];
    let watchdog_s = dog["watchdog_usec"].as_f64().unwrap() / 1e6;
    for name in ["stopped_during_import", "to_first_round"] {
        let run = &dog["runs"][name];
        assert!(run["watchdog_pings"].as_u64().unwrap() > 0, "{name}: {run}");
        assert!(
            run["watchdog_max_gap_s"].as_f64().unwrap() < watchdog_s,
            "{name}: {run}"
        );
        assert_eq!(run["stall_warnings"].as_u64(), Some(0), "{name}: {run}");
        assert_eq!(run["exit_success"], true, "{name}: {run}");
        assert!(run["stop_s"].as_f64().unwrap() < 30.0, "{name}: {run}");
    }
    assert_eq!(
        dog["runs"]["stopped_during_import"]["import_abandoned"], true,
        "{dog}"
    );
    assert!(
        finite(&dog["runs"]["to_first_round"]["first_round_s"]),
        "{dog}"
    );

    // 9. Every event through the webhook notifier, in order, once each.
    let n = &r["notify"];
    assert_eq!(n["delivered"], n["events"], "{n}");
    assert_eq!(n["in_order"], true, "{n}");
    assert_eq!(n["once_per_id"], true, "{n}");
    assert!(finite(&n["deliveries_per_s"]), "{n}");
    // 10. Dashboard: the paged summary and the full page answered under
    // load without errors; the gzipped page is smaller; the fleet page
    // showed its rows (every image of the quick fleet fits one page)
    // without a console error.
    let dash = &r["dashboard"];
    for run in ["summary", "full", "not_modified"] {
        let a = &dash[run];
        assert!(a["requests_per_s"].as_f64().unwrap() > 0.0, "{run}: {dash}");
        assert_eq!(a["errors"].as_u64(), Some(0), "{run}: {dash}");
    }
    assert!(
        dash["page_bytes_gzip"].as_u64().unwrap() < dash["page_bytes"].as_u64().unwrap(),
        "{dash}"
    );
    assert!(finite(&dash["first_rows_ms_median"]), "{dash}");
    for run in dash["first_rows"].as_array().unwrap() {
        assert_eq!(run["rows"].as_u64(), dash["images"].as_u64(), "{run}");
        assert_eq!(run["console_errors"], serde_json::json!([]), "{run}");
    }
}

/// The opt-in `engines` scenario (it needs podman and runc): with one, two
/// and three engines every image is rebuilt, on every engine.
#[test]
fn the_engines_scenario_spreads_the_fleet_over_each_engine_count() {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("bench.json");
    let run = Command::new(env!("CARGO_BIN_EXE_rebased-bench"))
        .args(["--quick", "--only", "engines", "--json"])
        .arg(&json)
        .env("REBASED_BIN", rebased_bin())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "rebased-bench --only engines failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let e = &r["engines"];
    let images = e["images"].as_u64().unwrap();
    for n in 1..=3u64 {
        let run = &e[n.to_string()];
        let spread = run["spread"].as_object().unwrap();
        assert_eq!(spread.len() as u64, n.min(images), "{run}");
        assert_eq!(
            spread.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
            images,
            "{run}"
        );
        assert!(
            finite(&run["wall_s"]) && finite(&run["overhead_s"]),
            "{run}"
        );
    }
}
