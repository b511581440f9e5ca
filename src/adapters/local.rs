//! Local adapters for `iomt run --local`: device events from JSON Lines files or standard input,
//! checkpoints, snapshots and dead letters in a state directory, and Observations kept as NDJSON
//! files when no FHIR server is given.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::fhir::Json;
use crate::fhir::identity::{resource_id, version_id};
use crate::json::{JObject, JToken, parse_message};
use crate::model::format_utc;
use crate::pipeline::deadletter::{DeadLetterRecord, Origin};
use crate::pipeline::ports::{
    BatchReply, BatchRequest, DeadLetterStore, FhirApi, FhirApiError, FhirApiErrorKind, PartitionSource, SourceError,
    SourceEvent, StateError, StateStore, TransientError,
};

/// How each input line is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineFormat {
    /// The line is the event body.
    #[default]
    Body,
    /// The line is `{"Body": …, "Properties": {…}, "SystemProperties": {…}}`.
    Envelope,
}

/// Where lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file; with `follow`, lines appended later are read too.
    File {
        /// The path.
        path: PathBuf,
        /// Keep reading at the end of the file.
        follow: bool,
    },
    /// Standard input (no resume after a restart: it cannot be re-read).
    Stdin,
}

/// A JSON Lines input as a partition: one event per non-blank line; the offset is the line
/// number, the checkpoint the last line done (kept in the state directory).
pub struct FileSource {
    partition: String,
    lines: mpsc::Receiver<(usize, String)>,
    format: LineFormat,
    checkpoint_path: Option<PathBuf>,
    /// How long a batch waits for more lines after its first; `None` for a regular file read
    /// without following, whose batch takes lines until its end (or the batch is full).
    linger: Option<Duration>,
    ended: bool,
    reader: tokio::task::JoinHandle<()>,
}

/// How long a batch from a stream (a followed file, a pipe, standard input) keeps collecting
/// lines after its first: lines written together are processed together, and a slow trickle is
/// not held back for long.
const STREAM_BATCH_LINGER: Duration = Duration::from_millis(100);

impl Drop for FileSource {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl FileSource {
    /// Opens `input`; lines up to the stored checkpoint are skipped.
    pub fn open(input: &Input, format: LineFormat, state_dir: &Path) -> std::io::Result<FileSource> {
        match input {
            Input::File { path, follow } => {
                let name = path
                    .file_name()
                    .map(|name| name.to_string_lossy().to_string())
                    .unwrap_or_else(|| "input".into());
                let key = hex(&Sha256::digest(path.to_string_lossy().as_bytes()))[..12].to_string();
                let checkpoint = state_dir.join("checkpoints").join(format!("{name}-{key}.json"));
                let done = std::fs::read_to_string(&checkpoint)
                    .ok()
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                    .and_then(|value| value["line"].as_u64())
                    .unwrap_or(0) as usize;
                let file = std::fs::File::open(path)?;
                let streaming = *follow || !file.metadata()?.is_file();
                let lines = Lines {
                    reader: BufReader::new(file),
                    done,
                    follow: *follow,
                };
                Ok(FileSource::reading(name, lines, format, Some(checkpoint), streaming))
            }
            Input::Stdin => {
                let lines = Lines {
                    reader: BufReader::new(std::io::stdin()),
                    done: 0,
                    follow: false,
                };
                Ok(FileSource::reading("stdin".to_string(), lines, format, None, true))
            }
        }
    }

    /// A source of `lines`, read on a blocking thread.
    fn reading<R: BufRead + Send + 'static>(
        partition: String,
        lines: Lines<R>,
        format: LineFormat,
        checkpoint_path: Option<PathBuf>,
        streaming: bool,
    ) -> FileSource {
        let (sender, receiver) = mpsc::channel(10_000);
        let reader = tokio::task::spawn_blocking(move || lines.send_to(&sender));
        FileSource {
            partition,
            lines: receiver,
            format,
            checkpoint_path,
            linger: streaming.then_some(STREAM_BATCH_LINGER),
            ended: false,
            reader: tokio::spawn(async move {
                let _ = reader.await;
            }),
        }
    }

    fn event(&self, number: usize, line: &str) -> SourceEvent {
        let origin = Origin {
            partition: self.partition.clone(),
            offset: number.to_string(),
            sequence_number: Some(number as i64),
            enqueued_time: Some(Utc::now()),
        };
        if self.format == LineFormat::Envelope
            && let Ok(JToken::Object(mut envelope)) = parse_message(line, 1)
        {
            let bag = |value: Option<JToken>| match value {
                Some(JToken::Object(object)) => object,
                _ => JObject::new(),
            };
            let properties = bag(envelope.remove("Properties"));
            let system_properties = bag(envelope.remove("SystemProperties"));
            let body = envelope.remove("Body").unwrap_or(JToken::Null).to_json();
            return SourceEvent {
                origin,
                body: body.into_bytes(),
                properties,
                system_properties,
            };
        }
        SourceEvent {
            origin,
            body: line.as_bytes().to_vec(),
            properties: JObject::new(),
            system_properties: JObject::new(),
        }
    }
}

/// Lines of an input, numbered from 1.
struct Lines<R> {
    reader: R,
    /// Lines already processed (the checkpoint): skipped.
    done: usize,
    /// At the end, wait for more.
    follow: bool,
}

impl<R: BufRead> Lines<R> {
    /// Sends the non-blank lines after `done` with their numbers, until the end (with `follow`,
    /// until nobody receives any more).
    fn send_to(mut self, sender: &mpsc::Sender<(usize, String)>) {
        let mut number = 0;
        let mut buffer = String::new();
        loop {
            buffer.clear();
            match self.reader.read_line(&mut buffer) {
                // At the end of a followed file: wait for more, unless nobody reads any more.
                Ok(0) if self.follow && !sender.is_closed() => std::thread::sleep(Duration::from_millis(200)),
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if !buffer.ends_with('\n') && self.follow {
                        // A line still being written: wait for its end.
                        let mut rest = String::new();
                        while !rest.ends_with('\n') {
                            if sender.is_closed() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                            if self.reader.read_line(&mut rest).is_err() {
                                return;
                            }
                        }
                        buffer.push_str(&rest);
                    }
                    number += 1;
                    let line = buffer.trim_end_matches(['\n', '\r']);
                    if number <= self.done || line.trim().is_empty() {
                        continue;
                    }
                    if sender.blocking_send((number, line.to_string())).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl PartitionSource for FileSource {
    fn partition_id(&self) -> &str {
        &self.partition
    }

    async fn receive(&mut self, max: usize, wait: Duration) -> Result<Vec<SourceEvent>, SourceError> {
        if self.ended {
            return Err(SourceError::Ended(format!("end of {}", self.partition)));
        }
        let mut events = Vec::new();
        let first = tokio::time::timeout(wait, self.lines.recv()).await;
        match first {
            Err(_) => return Ok(events),
            Ok(None) => {
                self.ended = true;
                return Err(SourceError::Ended(format!("end of {}", self.partition)));
            }
            Ok(Some((number, line))) => events.push(self.event(number, &line)),
        }
        let deadline = self.linger.map(|linger| tokio::time::Instant::now() + linger);
        while events.len() < max {
            let next = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                // A regular file: however far the reader thread lags, its lines make one batch.
                None => self.lines.recv().await,
            };
            match next {
                Some((number, line)) => events.push(self.event(number, &line)),
                None => {
                    self.ended = true;
                    break;
                }
            }
        }
        Ok(events)
    }

    async fn checkpoint(&mut self, through: &Origin) -> Result<(), SourceError> {
        let Some(path) = &self.checkpoint_path else {
            return Ok(());
        };
        let line: u64 = through.offset.parse().unwrap_or(0);
        write_atomically(path, format!(r#"{{"line":{line}}}"#).as_bytes())
            .map_err(|error| SourceError::Transient(format!("cannot write the checkpoint {}: {error}", path.display())))
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so a crash leaves the old or
/// the new content, never a mix.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, data)?;
    let file = std::fs::File::open(&temporary)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// A short hash of what identifies a failure: the source position, the error and the payload
/// (not the time, so the same failure of the same event keeps one record).
pub fn record_discriminator(record: &DeadLetterRecord) -> String {
    let text = format!(
        "{}|{}|{}|{}|{}|{}|{}",
        record.stage.as_str(),
        record.partition,
        record.offset,
        record.error_kind,
        record.message,
        record.payload.as_deref().unwrap_or(""),
        record.payload_base64.as_deref().unwrap_or("")
    );
    hex(&Sha256::digest(text.as_bytes()))[..16].to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Dead-letter records as JSON files under a directory.
#[derive(Debug, Clone)]
pub struct DirDeadLetterStore {
    root: PathBuf,
}

impl DirDeadLetterStore {
    /// Records under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirDeadLetterStore { root: root.into() }
    }
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> TransientError {
    TransientError(format!("cannot {what} {}: {error}", path.display()))
}

#[async_trait]
impl DeadLetterStore for DirDeadLetterStore {
    async fn write(&self, records: &[DeadLetterRecord]) -> Result<(), TransientError> {
        for record in records {
            let discriminator = record_discriminator(record);
            let path = self.root.join(record.name(&discriminator));
            let json = serde_json::to_vec_pretty(record).expect("records serialize");
            write_atomically(&path, &json).map_err(|error| io_error("write", &path, error))?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<(String, DeadLetterRecord)>, TransientError> {
        let mut found = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|extension| extension == "json") {
                    let text = std::fs::read_to_string(&path).map_err(|error| io_error("read", &path, error))?;
                    let Ok(record) = serde_json::from_str::<DeadLetterRecord>(&text) else {
                        continue;
                    };
                    let name = path
                        .strip_prefix(&self.root)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .replace('\\', "/");
                    found.push((name, record));
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    async fn remove(&self, name: &str) -> Result<(), TransientError> {
        let path = self.root.join(name);
        std::fs::remove_file(&path).map_err(|error| io_error("remove", &path, error))
    }
}

/// Snapshots as files; the version tag is the SHA-256 of the content.
#[derive(Debug, Clone)]
pub struct DirStateStore {
    root: PathBuf,
}

impl DirStateStore {
    /// Documents under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStateStore { root: root.into() }
    }
}

#[async_trait]
impl StateStore for DirStateStore {
    async fn load(&self, name: &str) -> Result<Option<(Vec<u8>, String)>, StateError> {
        let path = self.root.join(name);
        match std::fs::read(&path) {
            Ok(data) => {
                let tag = hex(&Sha256::digest(&data));
                Ok(Some((data, tag)))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StateError::Transient(format!(
                "cannot read {}: {error}",
                path.display()
            ))),
        }
    }

    async fn save(&self, name: &str, data: &[u8], expected: Option<&str>) -> Result<String, StateError> {
        let current = self.load(name).await?.map(|(_, tag)| tag);
        if current.as_deref() != expected {
            return Err(StateError::Conflict);
        }
        let path = self.root.join(name);
        write_atomically(&path, data)
            .map_err(|error| StateError::Transient(format!("cannot write {}: {error}", path.display())))?;
        Ok(hex(&Sha256::digest(data)))
    }
}

/// A FHIR store kept as NDJSON files (`Observation.ndjson`, …): resources in memory, versioned,
/// searchable by identifier and id, written back after every change. The local output when no
/// FHIR server is given.
#[derive(Debug)]
pub struct NdjsonFhirStore {
    dir: PathBuf,
    resources: Mutex<BTreeMap<(String, String), Json>>,
}

impl NdjsonFhirStore {
    /// Opens (or starts) the store in `dir`, loading the NDJSON files there.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut resources = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|extension| extension != "ndjson") {
                continue;
            }
            for line in std::fs::read_to_string(&path)?.lines().filter(|l| !l.trim().is_empty()) {
                let Ok(resource) = Json::parse(line) else { continue };
                if let (Some(kind), Some(id)) = (
                    resource.get("resourceType").and_then(Json::as_str),
                    resource_id(&resource),
                ) {
                    resources.insert((kind.to_string(), id.to_string()), resource.clone());
                }
            }
        }
        Ok(NdjsonFhirStore {
            dir,
            resources: Mutex::new(resources),
        })
    }

    /// The NDJSON file of a resource type.
    pub fn file(&self, resource_type: &str) -> PathBuf {
        self.dir.join(format!("{resource_type}.ndjson"))
    }

    fn save_type(&self, resources: &BTreeMap<(String, String), Json>, resource_type: &str) -> Result<(), FhirApiError> {
        let mut text = String::new();
        for ((kind, _), resource) in resources {
            if kind == resource_type {
                resource.write(&mut text);
                text.push('\n');
            }
        }
        let path = self.file(resource_type);
        write_atomically(&path, text.as_bytes()).map_err(|error| {
            FhirApiError::new(
                FhirApiErrorKind::Transient,
                None,
                format!("cannot write {}: {error}", path.display()),
            )
        })
    }

    fn put_locked(
        &self,
        resources: &mut BTreeMap<(String, String), Json>,
        resource: &Json,
        if_match: Option<&str>,
    ) -> Result<Json, FhirApiError> {
        let rejected = |what: &str| FhirApiError::new(FhirApiErrorKind::Rejected, Some(400), what.to_string());
        let kind = resource
            .get("resourceType")
            .and_then(Json::as_str)
            .ok_or_else(|| rejected("a resource needs a resourceType"))?
            .to_string();
        let id = resource_id(resource)
            .ok_or_else(|| rejected("a resource needs an id"))?
            .to_string();
        let key = (kind, id);
        let current = resources
            .get(&key)
            .and_then(|stored| version_id(stored).map(str::to_string));
        if let Some(expected) = if_match
            && current.as_deref() != Some(expected)
        {
            return Err(FhirApiError::new(
                FhirApiErrorKind::Conflict,
                Some(412),
                format!(
                    "PUT {}/{} precondition failed: version {expected} is not current",
                    key.0, key.1
                ),
            ));
        }
        let version = current.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
        let mut stored = resource.clone();
        if let Some(object) = stored.as_object_mut() {
            let meta = crate::fhir::Object::new()
                .with("versionId", Json::str(version.to_string()))
                .with("lastUpdated", Json::str(format_utc(Utc::now())));
            object.set("meta", Json::Object(meta));
        }
        resources.insert(key, stored.clone());
        Ok(stored)
    }

    fn search_locked(
        resources: &BTreeMap<(String, String), Json>,
        resource_type: &str,
        params: &[(&str, &str)],
    ) -> Vec<Json> {
        resources
            .iter()
            .filter(|((kind, _), _)| kind == resource_type)
            .map(|(_, resource)| resource)
            .filter(|resource| params.iter().all(|(name, value)| matches_param(resource, name, value)))
            .cloned()
            .collect()
    }
}

/// The search parameters the connector uses: `identifier` (token `[system|]value`) and `_id`.
fn matches_param(resource: &Json, name: &str, value: &str) -> bool {
    match name {
        "_id" => resource_id(resource) == Some(value),
        "identifier" => {
            let (system, wanted) = match value.split_once('|') {
                Some((system, wanted)) => (Some(system), wanted),
                None => (None, value),
            };
            resource
                .get("identifier")
                .and_then(Json::as_array)
                .unwrap_or_default()
                .iter()
                .any(|identifier| {
                    identifier.get("value").and_then(Json::as_str) == Some(wanted)
                        && system.is_none_or(|system| {
                            identifier.get("system").and_then(Json::as_str).unwrap_or("") == system
                        })
                })
        }
        _ => true,
    }
}

#[async_trait]
impl FhirApi for NdjsonFhirStore {
    async fn search(
        &self,
        resource_type: &str,
        params: &[(&str, String)],
        limit: Option<usize>,
    ) -> Result<Vec<Json>, FhirApiError> {
        let resources = self.resources.lock().expect("never poisoned");
        let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut found = Self::search_locked(&resources, resource_type, &params);
        if let Some(limit) = limit {
            found.truncate(limit);
        }
        Ok(found)
    }

    async fn put(&self, resource: &Json, if_match: Option<&str>) -> Result<Json, FhirApiError> {
        let mut resources = self.resources.lock().expect("never poisoned");
        let stored = self.put_locked(&mut resources, resource, if_match)?;
        let kind = stored
            .get("resourceType")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        self.save_type(&resources, &kind)?;
        Ok(stored)
    }

    async fn batch(&self, requests: Vec<BatchRequest>) -> Result<Vec<Result<BatchReply, FhirApiError>>, FhirApiError> {
        let mut resources = self.resources.lock().expect("never poisoned");
        let mut changed = std::collections::BTreeSet::new();
        let replies = requests
            .iter()
            .map(|request| match request {
                BatchRequest::Search { resource_type, params } => {
                    let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                    Ok(BatchReply::Found(Self::search_locked(
                        &resources,
                        resource_type,
                        &params,
                    )))
                }
                BatchRequest::Put { resource, if_match } => {
                    let stored = self.put_locked(&mut resources, resource, if_match.as_deref())?;
                    changed.insert(
                        stored
                            .get("resourceType")
                            .and_then(Json::as_str)
                            .unwrap_or("")
                            .to_string(),
                    );
                    Ok(BatchReply::Stored(stored))
                }
            })
            .collect();
        for kind in changed {
            self.save_type(&resources, &kind)?;
        }
        Ok(replies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "iomt-local-{name}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn the_ndjson_store_versions_searches_and_persists() {
        let dir = temp_dir("store");
        let store = NdjsonFhirStore::open(&dir).unwrap();
        let observation = Json::parse(
            r#"{"resourceType":"Observation","id":"o1","identifier":[{"system":"s","value":"v"}],"status":"final"}"#,
        )
        .unwrap();
        let stored = store.put(&observation, None).await.unwrap();
        assert_eq!(version_id(&stored), Some("1"));
        let stale = store.put(&observation, Some("7")).await.unwrap_err();
        assert_eq!(stale.kind, FhirApiErrorKind::Conflict);
        store.put(&observation, Some("1")).await.unwrap();
        assert_eq!(
            store
                .search("Observation", &[("identifier", "s|v".into())], None)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .search("Observation", &[("identifier", "t|v".into())], None)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .search("Observation", &[("identifier", "v".into())], None)
                .await
                .unwrap()
                .len(),
            1
        );
        let reopened = NdjsonFhirStore::open(&dir).unwrap();
        let found = reopened
            .search("Observation", &[("_id", "o1".into())], None)
            .await
            .unwrap();
        assert_eq!(version_id(&found[0]), Some("2"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn file_sources_resume_after_their_checkpoint() {
        let dir = temp_dir("source");
        let input = dir.join("in.jsonl");
        std::fs::write(&input, "{\"a\":1}\n\n{\"a\":2}\n{\"a\":3}\n").unwrap();
        let file = Input::File {
            path: input.clone(),
            follow: false,
        };
        let mut source = FileSource::open(&file, LineFormat::Body, &dir).unwrap();
        let mut events = Vec::new();
        while events.len() < 2 {
            events.extend(source.receive(2 - events.len(), Duration::from_secs(5)).await.unwrap());
        }
        assert_eq!(events[1].origin.offset, "3", "blank lines keep their numbers");
        source.checkpoint(&events[1].origin).await.unwrap();
        drop(source);
        let mut again = FileSource::open(&file, LineFormat::Body, &dir).unwrap();
        let events = again.receive(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].body, b"{\"a\":3}");
        assert!(matches!(
            again.receive(10, Duration::from_secs(5)).await,
            Err(SourceError::Ended(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Hands out its lines one at a time, pausing before each: a reader thread far behind.
    struct SlowLines {
        lines: std::collections::VecDeque<&'static str>,
        pause: Duration,
    }

    impl std::io::Read for SlowLines {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let Some(line) = self.lines.pop_front() else {
                return Ok(0);
            };
            std::thread::sleep(self.pause);
            out[..line.len()].copy_from_slice(line.as_bytes());
            Ok(line.len())
        }
    }

    fn slow_source(lines: &[&'static str], pause: Duration, streaming: bool) -> FileSource {
        let lines = Lines {
            reader: BufReader::new(SlowLines {
                lines: lines.iter().copied().collect(),
                pause,
            }),
            done: 0,
            follow: false,
        };
        FileSource::reading("slow".into(), lines, LineFormat::Body, None, streaming)
    }

    /// A file read to its end makes one batch, however slowly its lines arrive: split, a
    /// window's Measurements would land in two batches and the second would amend the first.
    #[tokio::test]
    async fn a_file_makes_one_batch_however_slowly_it_is_read() {
        let lines = ["{\"a\":1}\n", "{\"a\":2}\n", "\n", "{\"a\":3}\n"];
        let mut source = slow_source(&lines, Duration::from_millis(150), false);
        let events = source.receive(100, Duration::from_secs(30)).await.unwrap();
        let offsets: Vec<&str> = events.iter().map(|event| event.origin.offset.as_str()).collect();
        assert_eq!(offsets, ["1", "2", "4"]);
        assert!(matches!(
            source.receive(100, Duration::from_secs(5)).await,
            Err(SourceError::Ended(_))
        ));
        // A full batch still ends the batch.
        let mut source = slow_source(&lines, Duration::from_millis(10), false);
        assert_eq!(source.receive(2, Duration::from_secs(30)).await.unwrap().len(), 2);
        assert_eq!(source.receive(2, Duration::from_secs(30)).await.unwrap().len(), 1);
    }

    /// A stream's batch waits only briefly for more: a line that comes much later starts the
    /// next batch instead of holding back the lines before it.
    #[tokio::test]
    async fn a_stream_batch_does_not_wait_for_a_late_line() {
        let mut source = slow_source(&["{\"a\":1}\n", "{\"a\":2}\n"], Duration::from_secs(2), true);
        let first = source.receive(100, Duration::from_secs(30)).await.unwrap();
        assert_eq!(first.len(), 1, "the second line comes 2 s after the first");
        let second = source.receive(100, Duration::from_secs(30)).await.unwrap();
        assert_eq!(second[0].origin.offset, "2");
    }

    #[tokio::test]
    async fn state_saves_need_the_current_version() {
        let dir = temp_dir("state");
        let store = DirStateStore::new(&dir);
        let tag = store.save("p/0.json", b"one", None).await.unwrap();
        assert_eq!(store.save("p/0.json", b"x", None).await, Err(StateError::Conflict));
        let tag2 = store.save("p/0.json", b"two", Some(&tag)).await.unwrap();
        assert_eq!(
            store.save("p/0.json", b"x", Some(&tag)).await,
            Err(StateError::Conflict)
        );
        assert_eq!(store.load("p/0.json").await.unwrap(), Some((b"two".to_vec(), tag2)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
