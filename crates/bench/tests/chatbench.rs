//! `chatbench compare` runs end to end: it starts the bare relay, the
//! durable relay (a flat log, and SQLite) and the real server, drives all
//! four, and reports figures for each. Nothing here
//! asserts a speed (this machine is shared and noisy); it asserts that the
//! tool works and that every message it sent the server was acknowledged
//! and delivered.

use std::process::Command;

/// The `chatserver` binary beside `chatbench` (the workspace's test run
/// builds both; another package's binaries have no `CARGO_BIN_EXE_`).
fn chatserver() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_chatbench")).with_file_name("chatserver");
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

#[test]
fn compare_runs_every_target_and_reports_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plot = dir.path().join("latency.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_chatbench"))
        .args(["compare", "--pairs", "2", "--repeat", "1"])
        .arg("--plot")
        .arg(&plot)
        .args(["--duration", "0.5", "--warmup", "0.2"])
        .arg("--server")
        .arg(chatserver())
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
    for target in ["relay", "durable-relay", "sqlite-relay", "chatserver"] {
        let row = rows
            .iter()
            .find(|r| r["target"] == target)
            .unwrap_or_else(|| panic!("no {target} row in {json}"));
        assert!(row["delivered"].as_u64().unwrap_or(0) > 0, "{row}");
        assert!(row["server_cpu_us_per_msg"].is_number(), "{row}");
    }
    for target in ["durable-relay", "sqlite-relay", "chatserver"] {
        let server = rows.iter().find(|r| r["target"] == target).expect("row");
        assert_eq!(server["refused"], 0, "{server}");
        assert_eq!(
            server["acked"], server["sent"],
            "every message sent to {target} is acknowledged: {server}"
        );
    }
    // the latency picture has a line for each target
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(svg.starts_with("<svg"), "{svg}");
    for series in [
        "relay, 2 pairs",
        "durable-relay, 2 pairs",
        "sqlite-relay, 2 pairs",
        "chatserver, 2 pairs",
    ] {
        assert!(svg.contains(series), "no {series} line:\n{svg}");
    }
    assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
}

#[test]
fn open_loop_pairs_deliver_at_the_offered_rate_and_every_message_is_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = start_server(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_chatbench"))
        .args(["pairs", "--addr", &addr, "--pairs", "2", "--rate", "200"])
        .args(["--duration", "1", "--warmup", "0.2"])
        .output()
        .expect("run chatbench");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chatbench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON report");
    let delivered = report["delivered"].as_f64().expect("delivered");
    let sent = report["sent"].as_f64().expect("sent");
    assert!(delivered > 0.0, "{report}");
    // The schedule, not the server, bounds what is sent: 200 msg/s for about
    // 1.2 s (nothing about the server's speed is asserted).
    assert!(
        sent <= 400.0,
        "an open loop sends no faster than offered: {report}"
    );
    assert_eq!(report["acked"], report["sent"], "{report}");
}

/// `--original-frames` drives the server exactly as the original C++
/// client would: the server takes every session for the original client's,
/// so it answers no chat request (nothing acked, nothing refused), and the
/// receivers, read one frame at a time, get every message.
#[test]
fn pairs_with_the_original_clients_frames_are_delivered_unanswered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = start_server(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_chatbench"))
        .args([
            "pairs",
            "--addr",
            &addr,
            "--pairs",
            "3",
            "--original-frames",
        ])
        .args(["--duration", "1", "--warmup", "0.2"])
        .output()
        .expect("run chatbench");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chatbench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON report");
    assert!(report["delivered"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(
        report["acked"], 0,
        "the original client is not answered: {report}"
    );
    assert_eq!(report["refused"], 0, "{report}");
}

#[test]
fn resumes_take_every_user_back_without_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = start_server(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_chatbench"))
        .args([
            "resumes",
            "--addr",
            &addr,
            "--users",
            "20",
            "--concurrency",
            "5",
            "--rounds",
            "2",
        ])
        .output()
        .expect("run chatbench");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chatbench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON report");
    assert_eq!(report["resumes"], 40, "20 users, twice: {report}");
    assert_eq!(
        report["rounds"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(report["failed"], 0, "{report}");
    assert!(
        report["resumes_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
}

/// A chatserver on a free port over a fresh SQLite file in `dir`.
fn start_server(dir: &tempfile::TempDir) -> (std::process::Child, String) {
    use std::io::BufRead;
    // Port 0, and the address from the server's ready line: a port picked
    // free beforehand could be taken meanwhile by another test's process
    // (`compare` starts four servers), which the test would then talk to.
    let mut server = Command::new(chatserver())
        .args(["--listen", "127.0.0.1:0"])
        .args([
            "--db",
            &format!("sqlite://{}", dir.path().join("b.db").display()),
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chatserver");
    let mut log = std::io::BufReader::new(server.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = log
            .next()
            .expect("server exited before it was ready")
            .expect("server log");
        if line.contains("chatserver ready")
            && let Some(addr) = line
                .split("listen=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
        {
            break addr.to_owned();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || log.for_each(drop));
    (server, addr)
}
