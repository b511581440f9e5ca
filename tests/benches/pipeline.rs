//! The local pipeline under a fixed input rate: messages/s, end-to-end latency (p50/p99 from the
//! moment a reading is read to its FHIR write) and FHIR requests per reading, with the FHIR
//! server's raw batch-write rate of the same Observations measured in the same run.
//!
//! Workload: 1,000 devices at 1 Hz (1,000 messages/s) for `SECONDS` seconds, heart rate into
//! hourly SampledData windows, appended to a file that `iomt run --local --follow` reads and
//! writes to the FHIR server (`IOMT_TEST_FHIR_URL`).
//!
//! Run: `scripts/bench.sh pipeline`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod raw_write;
use raw_write::raw_batches;

const DEVICES: usize = 1000;
const SECONDS: usize = 30;
const MAX_LATENCY_MS: u64 = 1000;
const BUNDLE: usize = 100;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of every sample of `name` (summed over label sets).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A quantile of a Prometheus histogram, interpolated linearly inside its bucket.
fn quantile(text: &str, name: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|line| line.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|line| {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((bound, line.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    let target = q * total;
    let mut previous = (0.0, 0.0);
    for (bound, count) in buckets {
        if count >= target {
            if bound.is_infinite() {
                return previous.0;
            }
            let share = if count > previous.1 {
                (target - previous.1) / (count - previous.1)
            } else {
                1.0
            };
            return previous.0 + share * (bound - previous.0);
        }
        previous = (bound, count);
    }
    f64::NAN
}

async fn metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()
        .map(|response| response.text())
        .unwrap_or_else(|| panic!("no metrics"))
        .await
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("IOMT_TEST_FHIR_URL") else {
        eprintln!("IOMT_TEST_FHIR_URL is not set: run scripts/bench.sh pipeline (it starts the local FHIR server)");
        std::process::exit(2);
    };
    let url = url.trim_end_matches('/').to_string();
    let run = format!("pipe{}", chrono::Utc::now().timestamp() % 100_000);
    let dir = std::env::temp_dir().join(format!("iomt-bench-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let port = free_port();
    let run_started = chrono::Utc::now();
    let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/json-device");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["run", "--local", "--follow", "--input"])
        .arg(&input)
        .args(["--device-mapping", &format!("{templates}/devicecontent.json")])
        .args(["--fhir-mapping", &format!("{templates}/fhirmapping.json")])
        .args([
            "--fhir-url",
            &url,
            "--identity-mode",
            "create",
            "--batch-size",
            &BUNDLE.to_string(),
        ])
        .args([
            "--max-latency-ms",
            &MAX_LATENCY_MS.to_string(),
            "--metrics-port",
            &port.to_string(),
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iomt starts");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Warm-up: the first readings create Patients, Devices and Observations (not measured).
    let line = |device: usize, second: usize| {
        format!(
            "{{\"deviceid\":\"{run}-m{device:04}\",\"patientid\":\"{run}-p{device:04}\",\"measurementdatetime\":\"2024-03-01T08:{:02}:{:02}Z\",\"heartrate\":{}}}\n",
            second / 60,
            second % 60,
            50 + (device + second) % 60
        )
    };
    let mut file = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    let warm: String = (0..DEVICES).map(|device| line(device, 0)).collect();
    file.write_all(warm.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&metrics(port).await, "iomt_measurements_grouped_total") < DEVICES as f64 {
        assert!(Instant::now() < deadline, "the warm-up did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = metrics(port).await;

    // The measured run: 1,000 messages per second, in tenths of a second.
    let started = Instant::now();
    for tick in 0..SECONDS * 10 {
        let second = 1 + tick / 10;
        let slice = tick % 10;
        let lines: String = (slice * DEVICES / 10..(slice + 1) * DEVICES / 10)
            .map(|device| line(device, second))
            .collect();
        file.write_all(lines.as_bytes()).unwrap();
        let due = started + Duration::from_millis(100 * (tick as u64 + 1));
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
    }
    let sent = (SECONDS * DEVICES) as f64;
    let expected = DEVICES as f64 + sent;
    let deadline = Instant::now() + Duration::from_secs(300);
    let after = loop {
        let text = metrics(port).await;
        if metric(&text, "iomt_measurements_grouped_total") >= expected {
            break text;
        }
        assert!(Instant::now() < deadline, "the pipeline did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    let _ = Command::new("kill").arg("-INT").arg(worker.id().to_string()).status();
    let _ = worker.wait();

    let requests = metric(&after, "iomt_fhir_request_duration_seconds_count")
        - metric(&before, "iomt_fhir_request_duration_seconds_count");
    let written = (metric(&after, "iomt_observations_total") - metric(&before, "iomt_observations_total")).max(1.0);
    // Latencies of the measured run only: subtract the warm-up's histogram.
    let difference: String = after
        .lines()
        .map(|line| {
            let name = line.rsplit_once(' ').map(|(n, _)| n).unwrap_or(line);
            let earlier = before
                .lines()
                .find(|l| l.rsplit_once(' ').map(|(n, _)| n) == Some(name))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            match line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                Some(value) if !line.starts_with('#') => format!("{name} {}\n", value - earlier),
                _ => format!("{line}\n"),
            }
        })
        .collect();
    let p50 = quantile(&difference, "iomt_end_to_end_latency_seconds", 0.50);
    let p99 = quantile(&difference, "iomt_end_to_end_latency_seconds", 0.99);

    // Baseline: the same Observations written again with plain PUTs in Bundles of 100.
    let http = reqwest::Client::new();
    let since = run_started.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let mut stored = Vec::new();
    let mut next = Some(format!("{url}/Observation?code=8867-4&_count=500"));
    while let Some(page) = next.take() {
        let bundle: serde_json::Value = http.get(&page).send().await.unwrap().json().await.unwrap();
        for entry in bundle["entry"].as_array().cloned().unwrap_or_default() {
            let resource = &entry["resource"];
            // This run's Observations: the ones written since it started.
            if resource["meta"]["lastUpdated"]
                .as_str()
                .is_some_and(|updated| updated >= since.as_str())
            {
                stored.push(resource.clone());
            }
        }
        next = bundle["link"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
    }
    let entries: Vec<String> = stored
        .iter()
        .map(|o| {
            format!(
                r#"{{"resource":{o},"request":{{"method":"PUT","url":"Observation/{}"}}}}"#,
                o["id"].as_str().unwrap()
            )
        })
        .collect();
    let count = entries.len().max(1);
    let raw = count as f64 / raw_batches(&http, &url, entries, BUNDLE, 4).await.as_secs_f64();

    println!(
        "pipeline: iomt run --local, {DEVICES} devices at 1 Hz ({} msg/s offered) for {SECONDS} s, hourly SampledData, max latency {MAX_LATENCY_MS} ms, Bundles of {BUNDLE}",
        DEVICES
    );
    println!(
        "  processed:             {:>8.0} msg/s ({sent} messages in {:.1} s)",
        sent / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!("  end-to-end latency:    p50 {p50:.2} s   p99 {p99:.2} s   (goal p99 <= 5 s)");
    println!(
        "  FHIR requests:         {requests:.0} for {sent} readings = {:.4} per reading ({:.0}x fewer than one write per reading; goal >= 20x)",
        requests / sent,
        sent / requests.max(1.0)
    );
    println!(
        "  Observation writes:    {written:.0} ({:.0}/s)   server raw batch write rate of the same Observations: {raw:.0}/s ({count} resources)",
        written / elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
