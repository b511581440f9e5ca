//! The worker end to end: device events sent with the real Event Hubs SDK producer into the
//! protocol test endpoint → `iomt run --config` processes (normalize and transform stages) →
//! state and dead letters in Azurite → Observations in the Helios FHIR Server. The Observations
//! are compared with what the offline `iomt map` makes of the same messages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use azure_messaging_eventhubs::ProducerClient;
use azure_messaging_eventhubs::models::EventData;
use iomt_connector::adapters::blob::DEVELOPMENT_ACCOUNT_KEY;
use iomt_connector::fhir::observation::hashed_id;
use iomt_connector::pipeline::ports::FhirApi;
use serde_json::Value;

use crate::support::eventhubs::{EventHubsEndpoint, StaticTokenCredential};
use crate::support::fhir::{client, fhir_url, observations_of, unique};
use crate::util::TempDir;

const DEVICE_MAPPING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/json-device/devicecontent.json");
const FHIR_MAPPING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/json-device/fhirmapping.json");

/// One test's world: an Event Hubs endpoint, containers of its own in Azurite, a config file.
struct World {
    endpoint: EventHubsEndpoint,
    dir: TempDir,
    config: PathBuf,
    workers: Vec<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.kill();
            let _ = worker.wait();
        }
    }
}

impl World {
    async fn new(name: &str) -> World {
        let blob = std::env::var("IOMT_TEST_BLOB_URL").expect("IOMT_TEST_BLOB_URL: run the tests with scripts/test.sh");
        World::with_servers(name, &fhir_url(), &blob).await
    }

    /// A world whose worker reaches FHIR and Blob Storage at these URLs (proxies, in tests of
    /// outages).
    async fn with_servers(name: &str, fhir: &str, blob: &str) -> World {
        let endpoint = EventHubsEndpoint::start(&[("devicedata", 4), ("normalizeddata", 4)]).await;
        let dir = TempDir::new(name);
        let prefix = unique(name).to_lowercase().replace('_', "-");
        let prefix: String = prefix
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect();
        let config = dir.path().join("iomt.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[eventhubs]
namespace = "{namespace}"
custom_endpoint = "{url}"
update_interval_seconds = 1
partition_expiration_seconds = 3

[storage]
connection_string = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint={blob}"
checkpoint_container = "{prefix}-checkpoints"
state_container = "{prefix}-state"
template_container = "{prefix}-templates"
deadletter_container = "{prefix}-deadletter"
template_poll_seconds = 1

[azure]
credential = "anonymous"

[fhir]
url = "{fhir}"
auth = "none"
identity_mode = "create"

[flush]
max_latency_ms = 300
checkpoint_interval_ms = 300

[telemetry]
port = 0
"#,
                namespace = endpoint.namespace(),
                url = endpoint.url(),
                key = DEVELOPMENT_ACCOUNT_KEY,
            ),
        )
        .unwrap();
        let world = World {
            endpoint,
            dir,
            config,
            workers: Vec::new(),
        };
        world.upload(DEVICE_MAPPING, FHIR_MAPPING);
        world
    }

    fn iomt(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_iomt"));
        command.env(
            "RUST_LOG",
            "info,azure_messaging_eventhubs=warn,azure_core_amqp=warn,fe2o3_amqp=warn",
        );
        command
    }

    fn upload(&self, device: &str, fhir: &str) {
        let output = self
            .iomt()
            .args(["templates", "upload", "--config"])
            .arg(&self.config)
            .args(["--device-mapping", device, "--fhir-mapping", fhir])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }

    /// Starts a worker process; its log goes to `worker-<n>.log` in the test directory.
    fn start_worker(&mut self) -> usize {
        self.start_worker_with(&[])
    }

    /// Starts a worker process with extra environment variables.
    fn start_worker_with(&mut self, environment: &[(&str, &str)]) -> usize {
        let index = self.workers.len();
        let log = std::fs::File::create(self.log_path(index)).unwrap();
        let child = self
            .iomt()
            .envs(environment.iter().copied())
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the worker starts");
        self.workers.push(child);
        index
    }

    /// Waits until the normalized hub holds `count` events; fails the test after 90 s.
    async fn wait_for_normalized(&self, count: usize) {
        let arrived = self
            .endpoint
            .wait_for_count("normalizeddata", count, Duration::from_secs(90))
            .await;
        assert!(arrived, "{}", self.logs());
    }

    /// Waits until every partition of each hub is read by its consumer group; fails the test
    /// after 30 s.
    async fn wait_for_readers(&self, readers: &[(&str, &str)]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while readers
            .iter()
            .any(|(hub, group)| self.endpoint.receivers(hub, group).len() < 4)
        {
            assert!(tokio::time::Instant::now() < deadline, "{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{index}.log"))
    }

    fn kill_worker(&mut self, index: usize) {
        let _ = self.workers[index].kill();
        let _ = self.workers[index].wait();
    }

    /// Sends device event bodies to `devicedata`, spread over its partitions.
    ///
    /// A fresh producer's connection can drop before its first batch is made (`create_batch`:
    /// "Connection dropped: Connection must have been closed"). The SDK drops AMQP links without
    /// detaching them (its CBS client after each authorization, all receivers when it reattaches
    /// one), and fe2o3 0.14 ends a session when the peer's frame for such a link arrives, then
    /// closes the connection on the session's next frame; endpoint traces show this for receivers.
    /// Nothing has been sent at that point, so the chunk is retried on a new connection; a
    /// failure once a batch is on its way still fails the test.
    async fn send(&self, lines: &[String]) {
        const ATTEMPTS: usize = 3;
        for chunk in lines.chunks(200) {
            for attempt in 1..=ATTEMPTS {
                let opened = ProducerClient::builder()
                    .with_custom_endpoint(self.endpoint.url())
                    .open(self.endpoint.namespace(), "devicedata", StaticTokenCredential::new())
                    .await;
                let producer = match opened {
                    Ok(producer) => producer,
                    Err(error) if attempt < ATTEMPTS => {
                        eprintln!("producer did not open ({error}); opening again");
                        continue;
                    }
                    Err(error) => panic!("the producer does not open: {error}"),
                };
                let batch = match producer.create_batch(None).await {
                    Ok(batch) => batch,
                    Err(error) if attempt < ATTEMPTS => {
                        eprintln!("no batch from a fresh producer ({error}); opening again");
                        continue;
                    }
                    Err(error) => panic!("no batch from the producer: {error}"),
                };
                for line in chunk {
                    assert!(
                        batch
                            .try_add_event_data(EventData::builder().with_body(line.as_bytes().to_vec()).build(), None)
                            .unwrap()
                    );
                }
                // A hung send fails the test instead of stalling the suite (azure-sdk.md §8.3).
                tokio::time::timeout(Duration::from_secs(60), producer.send_batch(batch, None))
                    .await
                    .expect("the SDK producer got no outcome within 60 s")
                    .expect("the batch is sent");
                producer.close().await.ok();
                break;
            }
        }
    }

    fn dead_letters(&self) -> Vec<Value> {
        let output = self
            .iomt()
            .args(["deadletter", "list", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn logs(&self) -> String {
        (0..self.workers.len())
            .map(|index| std::fs::read_to_string(self.log_path(index)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Heart-rate messages: `devices` devices, `seconds` readings each, one per second from 08:00.
fn heart_rate_messages(run: &str, devices: usize, seconds: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(devices * seconds);
    for second in 0..seconds {
        for device in 0..devices {
            lines.push(format!(
                r#"{{"deviceid":"{run}-monitor-{device:03}","patientid":"{run}-patient-{device:03}","measurementdatetime":"2024-03-01T08:{:02}:{:02}Z","heartrate":{}}}"#,
                second / 60,
                second % 60,
                50 + (device + second) % 70
            ));
        }
    }
    lines
}

/// What `iomt map` makes of `lines`, keyed by patient, reduced to what must match.
fn expected(lines: &[String], dir: &Path) -> Vec<(String, Value)> {
    let input = dir.join("expected-input.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args([
            "map",
            "--device-mapping",
            DEVICE_MAPPING,
            "--fhir-mapping",
            FHIR_MAPPING,
            "--input",
        ])
        .arg(&input)
        .output()
        .unwrap();
    let mut observations: Vec<(String, Value)> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let observation: Value = serde_json::from_str(line).unwrap();
            let patient = observation["subject"]["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("Patient/")
                .to_string();
            (patient, essence(&observation))
        })
        .collect();
    observations.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));
    observations
}

/// The parts of an Observation two correct runs agree on: code, effective period, values.
fn essence(observation: &Value) -> Value {
    serde_json::json!({
        "code": observation["code"],
        "effectivePeriod": observation["effectivePeriod"],
        "valueSampledData": observation["valueSampledData"],
        "valueQuantity": observation["valueQuantity"],
        "component": observation["component"],
    })
}

/// The Observations in FHIR of the patients `iomt map` named (created by the worker in Create
/// mode under the hashed Patient ids).
async fn landed(api: &dyn FhirApi, patients: &[String]) -> Vec<(String, Value)> {
    let mut observations = Vec::new();
    for patient in patients {
        for observation in observations_of(api, &hashed_id(None, patient)).await {
            observations.push((patient.clone(), essence(&observation)));
        }
    }
    observations.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));
    observations
}

/// Waits until FHIR holds `expected` (or the time is up) and returns what it holds.
async fn wait_for(api: &dyn FhirApi, expected: &[(String, Value)], limit: Duration) -> Vec<(String, Value)> {
    let mut patients: Vec<String> = expected.iter().map(|(p, _)| p.clone()).collect();
    patients.dedup();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let now = landed(api, &patients).await;
        if now == expected || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_events_land_in_fhir_as_map_shows_them() {
    let mut world = World::new("e2e").await;
    world.start_worker();
    let run = unique("e2e");
    let mut lines = heart_rate_messages(&run, 8, 30);
    lines.push(format!(
        r#"{{"deviceid":"{run}-monitor-000","patientid":"{run}-patient-000","measurementdatetime":"2024-03-01T08:00:10Z","systolic":121,"diastolic":79}}"#
    ));
    world.send(&lines).await;
    let expected = expected(&lines, world.dir.path());
    assert_eq!(
        expected.len(),
        9,
        "8 hourly heart-rate Observations and one blood pressure"
    );
    let api = client(&fhir_url());
    let actual = wait_for(&*api, &expected, Duration::from_secs(90)).await;
    assert_eq!(actual, expected, "worker log:\n{}", world.logs());
    // The normalized hub holds one event per Measurement, keyed by device.
    assert_eq!(world.endpoint.count("normalizeddata"), lines.len());
    let keys: std::collections::BTreeSet<Option<String>> = world
        .endpoint
        .messages("normalizeddata")
        .into_iter()
        .map(|message| message.partition_key)
        .collect();
    assert_eq!(keys.len(), 8, "one partition key per device");
}

/// Messages that cannot be normalized: not JSON, a missing value, a bad timestamp.
fn poison_messages(run: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 3 {
            0 => format!("{{not json {run} {i}"),
            1 => format!(r#"{{"deviceid":"{run}-broken-{i}","patientid":"p","measurementdatetime":"2024-03-01T08:00:00Z","heartrate":null}}"#),
            _ => format!(r#"{{"deviceid":"{run}-broken-{i}","patientid":"p","measurementdatetime":"soon","heartrate":70}}"#),
        })
        .collect()
}

fn payloads(records: &[Value]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .map(|record| record["payload"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_repeatedly_loses_and_duplicates_nothing() {
    use rand::Rng;
    let mut world = World::new("crash").await;
    let run = unique("crash");
    let good = heart_rate_messages(&run, 30, 100);
    let poison = poison_messages(&run, 30);
    let mut lines = good.clone();
    for (index, bad) in poison.iter().enumerate() {
        lines.insert(index * 97 % lines.len(), bad.clone());
    }
    assert!(lines.len() >= 3000);
    let expected = expected(&good, world.dir.path());
    assert_eq!(expected.len(), 30);

    // Messages arrive in ten waves while the worker is killed (SIGKILL) at random moments.
    world.start_worker();
    let chunks: Vec<Vec<String>> = lines.chunks(lines.len().div_ceil(10)).map(<[String]>::to_vec).collect();
    let mut kills = 0;
    for chunk in chunks {
        world.send(&chunk).await;
        let wait = rand::rng().random_range(300..2500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let last = world.workers.len() - 1;
        world.kill_worker(last);
        kills += 1;
        world.start_worker();
    }
    assert!(kills >= 10);
    let api = client(&fhir_url());
    let actual = wait_for(&*api, &expected, Duration::from_secs(180)).await;
    assert_eq!(actual, expected, "after {kills} kills; worker logs:\n{}", world.logs());
    // Every poison message is dead-lettered exactly once (a re-read rewrites its record).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = world.dead_letters();
        if records.len() >= poison.len() || tokio::time::Instant::now() >= deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(records.len(), poison.len(), "{records:#?}");
    assert_eq!(payloads(&records), poison.iter().cloned().collect());
    // Each hourly Observation exists once: no duplicate under another id.
    let observations = observations_of(&*api, &hashed_id(None, &format!("{run}-patient-000"))).await;
    assert_eq!(observations.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_partitions_and_one_takes_over_when_the_other_dies() {
    let mut world = World::new("pair").await;
    let first = world.start_worker();
    let second = world.start_worker();
    // Both own partitions once balancing settles (4 partitions per hub, Balanced strategy).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs: Vec<String> = (0..2)
            .map(|i| std::fs::read_to_string(world.log_path(i)).unwrap_or_default())
            .collect();
        if logs.iter().all(|log| log.contains("Partition acquired")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both workers should own partitions:\n{}",
            world.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let run = unique("pair");
    let lines = heart_rate_messages(&run, 20, 60);
    let (early, late) = lines.split_at(lines.len() / 2);
    world.send(early).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    world.kill_worker(first);
    world.send(late).await;
    let expected = expected(&lines, world.dir.path());
    let api = client(&fhir_url());
    let actual = wait_for(&*api, &expected, Duration::from_secs(120)).await;
    assert_eq!(actual, expected, "worker logs:\n{}", world.logs());
    let survivor = std::fs::read_to_string(world.log_path(second)).unwrap();
    let acquired = survivor.matches("Partition acquired").count();
    assert!(
        acquired > 4,
        "the survivor took over partitions ({acquired} acquisitions):\n{survivor}"
    );
    assert!(world.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_container_and_a_fix_redrives_it() {
    let mut world = World::new("poison").await;
    // A FHIR mapping without body temperature: those Measurements cannot be mapped yet.
    let full: Value = serde_json::from_str(&std::fs::read_to_string(FHIR_MAPPING).unwrap()).unwrap();
    let mut partial = full.clone();
    partial["template"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["template"]["typeName"] != "bodytemperature");
    let partial_path = world.dir.path().join("partial.json");
    std::fs::write(&partial_path, partial.to_string()).unwrap();
    world.upload(DEVICE_MAPPING, partial_path.to_str().unwrap());
    world.start_worker();
    let run = unique("poison");
    let good = heart_rate_messages(&run, 3, 5);
    let poison = poison_messages(&run, 3);
    let temperature = format!(
        r#"{{"deviceid":"{run}-monitor-000","patientid":"{run}-patient-000","measurementdatetime":"2024-03-01T08:00:03Z","temperature":36.9}}"#
    );
    let mut lines = good.clone();
    lines.extend(poison.iter().cloned());
    lines.push(temperature.clone());
    world.send(&lines).await;
    let expected_good = expected(&good, world.dir.path());
    let api = client(&fhir_url());
    assert_eq!(
        wait_for(&*api, &expected_good, Duration::from_secs(60)).await,
        expected_good,
        "{}",
        world.logs()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = world.dead_letters();
        if records.len() >= 4 || tokio::time::Instant::now() >= deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut kinds: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap().to_string(),
                r["errorKind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("normalize".to_string(), "IncompatibleDataException".to_string()),
            ("normalize".to_string(), "IncompatibleDataException".to_string()),
            ("normalize".to_string(), "InvalidDataFormatException".to_string()),
            ("transform".to_string(), "TemplateNotFoundException".to_string()),
        ],
        "{records:#?}"
    );
    assert!(payloads(&records).is_superset(&poison.iter().cloned().collect()));
    let transform = records.iter().find(|r| r["stage"] == "transform").unwrap();
    assert_eq!(transform["payloadKind"], "measurement");
    assert!(
        transform["payload"]
            .as_str()
            .unwrap()
            .contains("\"Type\":\"bodytemperature\"")
    );
    assert!(
        transform["partition"].is_string() && transform["sequenceNumber"].is_i64(),
        "{transform}"
    );

    // The fix: the full FHIR mapping; the worker picks it up, and the redrive lands the
    // temperature; the unfixable messages are dead-lettered again.
    world.upload(DEVICE_MAPPING, FHIR_MAPPING);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let redrive = world
        .iomt()
        .args(["deadletter", "redrive", "--config"])
        .arg(&world.config)
        .output()
        .unwrap();
    assert!(redrive.status.success(), "{}", String::from_utf8_lossy(&redrive.stderr));
    let mut with_temperature = good.clone();
    with_temperature.push(temperature);
    let expected_all = expected(&with_temperature, world.dir.path());
    assert_eq!(
        wait_for(&*api, &expected_all, Duration::from_secs(60)).await,
        expected_all,
        "{}",
        world.logs()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let records = world.dead_letters();
        if records.len() == 3 && records.iter().all(|r| r["stage"] == "normalize") {
            assert_eq!(payloads(&records), poison.iter().cloned().collect());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{records:#?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(world.logs().contains("Template reloaded."), "{}", world.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_or_deleted_template_keeps_the_last_good_one() {
    let mut world = World::new("reload").await;
    world.start_worker();
    let run = unique("reload");
    let first = heart_rate_messages(&run, 2, 3);
    world.send(&first).await;
    let api = client(&fhir_url());
    let expected_first = expected(&first, world.dir.path());
    assert_eq!(
        wait_for(&*api, &expected_first, Duration::from_secs(60)).await,
        expected_first
    );
    // Upload an invalid mapping straight to the container (bypassing `templates upload`).
    let config = std::fs::read_to_string(&world.config).unwrap();
    let container = config
        .lines()
        .find_map(|line| line.strip_prefix("template_container = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let storage = crate::blob_storage::storage();
    let templates = storage.container(&container).unwrap();
    iomt_connector::adapters::blob::upload(
        &templates,
        "fhirmapping.json",
        b"{\"templateType\":\"CollectionFhir\",\"template\":[{}]}".to_vec(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more = heart_rate_messages(&run, 2, 6);
    world.send(&more[first.len()..]).await;
    let expected_more = expected(&more, world.dir.path());
    assert_eq!(
        wait_for(&*api, &expected_more, Duration::from_secs(60)).await,
        expected_more,
        "{}",
        world.logs()
    );
    let logs = world.logs();
    assert!(logs.contains("Template rejected; keeping the last good one."), "{logs}");
    assert!(logs.contains("fhirmapping.json"), "{logs}");
    // Deleted: still the last good one.
    templates.blob_client("fhirmapping.json").delete(None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let last = heart_rate_messages(&run, 2, 8);
    world.send(&last[more.len()..]).await;
    let expected_last = expected(&last, world.dir.path());
    assert_eq!(
        wait_for(&*api, &expected_last, Duration::from_secs(60)).await,
        expected_last,
        "{}",
        world.logs()
    );
    assert!(
        world
            .logs()
            .contains("The template was deleted from its container; keeping the last good one.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_and_storage_outages_delay_the_data_but_lose_none() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::support::servers::{Fault, Proxy};

    let down = Arc::new(AtomicBool::new(false));
    let outage = |down: Arc<AtomicBool>| {
        move |_: usize, _: &str, _: &str| {
            if down.load(Ordering::SeqCst) {
                Fault::Status(503, None)
            } else {
                Fault::Pass
            }
        }
    };
    let blob = std::env::var("IOMT_TEST_BLOB_URL").unwrap();
    let (blob_origin, account_path) = blob.rsplit_once('/').unwrap();
    let fhir_proxy = Proxy::start(&fhir_url(), outage(down.clone())).await;
    let blob_proxy = Proxy::start(blob_origin, outage(down.clone())).await;
    let mut world = World::with_servers("outage", &fhir_proxy.url, &format!("{}/{account_path}", blob_proxy.url)).await;
    world.start_worker();
    let run = unique("outage");
    let before = heart_rate_messages(&run, 4, 10);
    world.send(&before).await;
    let api = client(&fhir_url());
    let expected_before = expected(&before, world.dir.path());
    assert_eq!(
        wait_for(&*api, &expected_before, Duration::from_secs(60)).await,
        expected_before,
        "{}",
        world.logs()
    );

    // FHIR and Blob Storage answer 503 for six seconds while more readings arrive.
    down.store(true, Ordering::SeqCst);
    let during = heart_rate_messages(&run, 4, 30);
    world.send(&during[before.len()..]).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let blocked = fhir_proxy.faults() + blob_proxy.faults();
    assert!(blocked > 0, "the outage was seen");
    assert_eq!(
        landed(&*api, &[format!("{run}-patient-000")]).await,
        landed_subset(&expected_before, &run)
    );
    down.store(false, Ordering::SeqCst);

    let expected_all = expected(&during, world.dir.path());
    assert_eq!(
        wait_for(&*api, &expected_all, Duration::from_secs(120)).await,
        expected_all,
        "{}",
        world.logs()
    );
    assert!(
        world.dead_letters().is_empty(),
        "outages are retried, never dead-lettered"
    );
    assert!(
        world.workers[0].try_wait().unwrap().is_none(),
        "the worker survived the outage"
    );
}

/// The expected Observations of patient 000.
fn landed_subset(expected: &[(String, Value)], run: &str) -> Vec<(String, Value)> {
    expected
        .iter()
        .filter(|(patient, _)| *patient == format!("{run}-patient-000"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stages_can_run_in_separate_processes() {
    let mut world = World::new("stages").await;
    let normalize = world.start_worker_with(&[("IOMT_STAGES", "normalize")]);
    let transform = world.start_worker_with(&[("IOMT_STAGES", "transform")]);
    let run = unique("stages");
    let lines = heart_rate_messages(&run, 5, 10);
    world.send(&lines).await;
    let expected = expected(&lines, world.dir.path());
    let api = client(&fhir_url());
    assert_eq!(
        wait_for(&*api, &expected, Duration::from_secs(60)).await,
        expected,
        "{}",
        world.logs()
    );
    let normalize_log = std::fs::read_to_string(world.log_path(normalize)).unwrap();
    let transform_log = std::fs::read_to_string(world.log_path(transform)).unwrap();
    assert!(normalize_log.contains("Normalize stage started") && !normalize_log.contains("Transform stage started"));
    assert!(transform_log.contains("Transform stage started") && !transform_log.contains("Normalize stage started"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_the_service_detaches_are_reattached_without_losing_or_repeating_events() {
    let mut world = World::new("detach").await;
    world.start_worker_with(&[("IOMT_STAGES", "normalize")]);
    let run = unique("detach");
    let lines = heart_rate_messages(&run, 4, 50);
    let (first, second) = lines.split_at(100);
    world.send(first).await;
    world.wait_for_normalized(100).await;
    // Once the worker reads every partition, the service moves them all: each link is detached.
    world.wait_for_readers(&[("devicedata", "normalize")]).await;
    let detached = world.endpoint.force_detach("devicedata");
    assert!(detached >= 4, "every partition was being read: {detached}");
    world.send(second).await;
    world.wait_for_normalized(200).await;
    // Give repeated events time to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bodies: Vec<Vec<u8>> = world
        .endpoint
        .messages("normalizeddata")
        .into_iter()
        .map(|message| message.body)
        .collect();
    let distinct: std::collections::BTreeSet<&Vec<u8>> = bodies.iter().collect();
    assert_eq!(distinct.len(), 200, "every event normalized");
    assert_eq!(world.endpoint.count("devicedata"), 200, "the test sent each event once");
    assert_eq!(bodies.len(), 200, "no event normalized twice\n{}", world.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_by_the_network_are_reopened_without_losing_or_repeating_events() {
    let mut world = World::new("cut").await;
    world.start_worker();
    let run = unique("cut");
    let lines = heart_rate_messages(&run, 4, 50);
    let (first, second) = lines.split_at(100);
    world.send(first).await;
    world.wait_for_normalized(100).await;
    world
        .wait_for_readers(&[("devicedata", "normalize"), ("normalizeddata", "transform")])
        .await;
    // Let the worker learn its sends landed and checkpoint them (every 300 ms): a send whose
    // outcome the cut loses is sent again, as Event Hubs producers are at-least-once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every socket of the worker (both consumers and the producer) is cut at once.
    let cut = world.endpoint.cut_connections();
    assert!(cut >= 3, "the worker's connections were open: {cut}");
    world.send(second).await;
    world.wait_for_normalized(200).await;
    let expected = expected(&lines, world.dir.path());
    let api = client(&fhir_url());
    assert_eq!(
        wait_for(&*api, &expected, Duration::from_secs(90)).await,
        expected,
        "{}",
        world.logs()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.endpoint.count("devicedata"), 200, "the test sent each event once");
    assert_eq!(
        world.endpoint.count("normalizeddata"),
        200,
        "no event normalized twice\n{}",
        world.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_its_templates_are_uploaded_waits_for_them() {
    let mut world = World::new("early").await;
    // The worker looks for a device mapping nobody has uploaded yet.
    let name = [("IOMT_STORAGE_DEVICE_MAPPING", "uploaded-later.json")];
    world.start_worker_with(&[name[0], ("IOMT_STAGES", "normalize")]);
    let run = unique("early");
    let lines = heart_rate_messages(&run, 2, 10);
    world.send(&lines).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(world.workers[0].try_wait().unwrap().is_none(), "{}", world.logs());
    assert_eq!(world.endpoint.count("normalizeddata"), 0);
    assert!(
        world.logs().contains("is not in container"),
        "the wait is explained: {}",
        world.logs()
    );
    let output = world
        .iomt()
        .envs(name)
        .args(["templates", "upload", "--config"])
        .arg(&world.config)
        .args(["--device-mapping", DEVICE_MAPPING, "--fhir-mapping", FHIR_MAPPING])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        world
            .endpoint
            .wait_for_count("normalizeddata", lines.len(), Duration::from_secs(60))
            .await,
        "{}",
        world.logs()
    );
}
