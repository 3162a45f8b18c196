//! The metrics and health endpoint (`consort node DIR --metrics ADDR`) of real node processes,
//! scraped with plain HTTP GETs during and after a PSI job; `--log-format json`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fails, http_get, metrics_addr, ok, psi_args, s, sample, two_nodes_with};

#[test]
fn metrics_show_a_running_job_then_the_counters_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("bank.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let nodes = two_nodes_with(tmp.path(), 20_000, 5_000, |c| {
        c.args(["--metrics", "127.0.0.1:0"]);
        // The bank's log as JSON lines into a file (the partner's: the default, discarded).
        if c.get_args().any(|a| a.to_string_lossy().ends_with("bank")) {
            c.args(["--log-format", "json"]).stderr(log_file.try_clone().unwrap());
        }
    });
    let (bank, partner) = (metrics_addr(&nodes.a), metrics_addr(&nodes.b));
    let (status, body) = http_get(&bank, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(http_get(&partner, "/readyz").0, 200);
    assert_eq!(http_get(&bank, "/nothing").0, 404);
    let before = http_get(&bank, "/metrics").1;
    assert!(before.ends_with("# EOF\n"), "{before}");
    for reason in ["policy", "structure", "rate-limited", "audit", "pin", "internal"] {
        assert_eq!(sample(&before, "consort_refusals_total", &format!("reason=\"{reason}\"")), Some(0.0));
    }

    // During the job: the requester's gauge shows it running.
    let out = tmp.path().join("out.csv");
    let mut job = Command::new(env!("CARGO_BIN_EXE_consort"))
        .args(psi_args(&nodes.a, &out))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = r#"kind="psi",role="requester",state="running""#;
    let (mut seen_running, mut scrapes, mut scrape_time) = (false, 0u32, Duration::ZERO);
    while job.try_wait().unwrap().is_none() {
        let started = Instant::now();
        let scrape = http_get(&bank, "/metrics").1;
        scrape_time += started.elapsed();
        scrapes += 1;
        seen_running |= sample(&scrape, "consort_jobs", running) == Some(1.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = job.wait_with_output().unwrap();
    assert!(output.status.success());
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(v["intersection"], 5000, "{v}");
    assert!(seen_running, "no scrape of {scrapes} saw the job running");
    eprintln!("{scrapes} scrapes during the job, {:?} each on average", scrape_time / scrapes.max(1));

    // After it: the gauge is back to 0, the counters moved on both sides.
    let after = http_get(&bank, "/metrics").1;
    assert_eq!(sample(&after, "consort_jobs", running), Some(0.0), "{after}");
    let done = |role: &str| format!("kind=\"psi\",role=\"{role}\",state=\"done\"");
    assert_eq!(sample(&after, "consort_jobs_finished_total", &done("requester")), Some(1.0), "{after}");
    assert_eq!(sample(&after, "consort_job_duration_seconds_count", "kind=\"psi\""), Some(1.0), "{after}");
    let at_partner = http_get(&partner, "/metrics").1;
    assert_eq!(sample(&at_partner, "consort_jobs_finished_total", &done("responder")), Some(1.0), "{at_partner}");
    for scrape in [&after, &at_partner] {
        for counter in
            ["consort_wire_sent_bytes_total", "consort_wire_received_bytes_total", "consort_audit_appends_total"]
        {
            assert!(sample(scrape, counter, "").unwrap() > 0.0, "{counter}: {scrape}");
        }
        assert_eq!(sample(scrape, "consort_audit_failures_total", ""), Some(0.0));
        assert!(sample(scrape, "consort_peer_connections", "").is_some(), "{scrape}");
    }
    // Sent by one is received by the other (the same job, the same TLS bytes).
    assert_eq!(
        sample(&after, "consort_wire_sent_bytes_total", ""),
        sample(&at_partner, "consort_wire_received_bytes_total", "")
    );

    // A request outside the partner's grants: counted as a policy refusal, by class only.
    let mut args = psi_args(&nodes.a, &out);
    args[7] = "secret-dataset";
    fails(&args);
    let at_partner = http_get(&partner, "/metrics").1;
    assert_eq!(sample(&at_partner, "consort_refusals_total", "reason=\"policy\""), Some(1.0), "{at_partner}");
    assert!(!at_partner.contains("secret-dataset"), "{at_partner}");
    assert_eq!(http_get(&partner, "/healthz").0, 200);

    // --log-format json: every line the bank logged is one JSON object.
    drop(nodes);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 2, "{text}");
    for line in text.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(entry["level"].is_string() && entry["fields"].is_object(), "{line}");
    }
    assert!(text.contains("node started"), "{text}");
}

#[test]
fn the_metrics_address_comes_from_the_flag_or_the_config_and_a_bad_one_fails_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    ok(&["init", s(&dir), "--name", "n", "--listen", "127.0.0.1:0"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = fails(&["node", s(&dir), "--metrics", &addr]);
    assert!(err.contains(&format!("cannot listen for metrics on {addr}")), "{err}");
    let err = fails(&["node", s(&dir), "--metrics", "nowhere"]);
    assert!(err.contains("cannot listen for metrics on nowhere"), "{err}");

    // `[metrics] listen` in config.toml, without the flag.
    let config = dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[metrics]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    let node = common::start_node(&dir);
    assert_eq!(http_get(&metrics_addr(&dir), "/healthz"), (200, "ok\n".to_string()));
    drop(node);
    assert!(!dir.join("metrics.addr").exists(), "removed when the node stops");
    std::fs::write(&config, format!("{text}\n[metrics]\nlisten = \"127.0.0.1:0\"\nport = 1\n")).unwrap();
    let err = fails(&["node", s(&dir)]);
    assert!(err.contains("port"), "{err}");
}
