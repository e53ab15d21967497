//! `chatbench compare` runs end to end: it starts the bare relay and the
//! real server, drives both, and reports figures for each. Nothing here
//! asserts a speed (this machine is shared and noisy); it asserts that the
//! tool works and that every message it sent the server was acknowledged
//! and delivered.

use std::process::Command;

#[test]
fn compare_runs_both_targets_and_reports_them() {
    let out = Command::new(env!("CARGO_BIN_EXE_chatbench"))
        .args(["compare", "--pairs", "2", "--repeat", "1"])
        .args(["--duration", "0.5", "--warmup", "0.2"])
        .args(["--server", env!("CARGO_BIN_EXE_chatserver")])
        .output()
        .expect("run chatbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chatbench failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("msg/s"), "no table:\n{stdout}");
    let json = stdout.lines().last().expect("a JSON line");
    let rows: Vec<serde_json::Value> = serde_json::from_str(json).expect("JSON report");
    for target in ["relay", "chatserver"] {
        let row = rows
            .iter()
            .find(|r| r["target"] == target)
            .unwrap_or_else(|| panic!("no {target} row in {json}"));
        assert!(row["delivered"].as_u64().unwrap_or(0) > 0, "{row}");
        assert!(row["server_cpu_us_per_msg"].is_number(), "{row}");
    }
    let server = rows
        .iter()
        .find(|r| r["target"] == "chatserver")
        .expect("row");
    assert_eq!(server["refused"], 0, "{server}");
    assert_eq!(
        server["acked"], server["sent"],
        "every message sent to the server is acknowledged: {server}"
    );
}
