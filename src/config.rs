//! The worker's configuration: a TOML file, then environment variables `IOMT_<SECTION>_<KEY>`
//! (e.g. `IOMT_FHIR_URL`, `IOMT_STORAGE_CONNECTION_STRING`) over it. [`Config::validate`] checks
//! everything up front and reports every problem at once with the key to fix.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::fhir::identity::IdentityMode;

/// Which stages this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    /// `devicedata` → normalize → `normalizeddata`.
    Normalize,
    /// `normalizeddata` → group → FHIR.
    Transform,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Stages run by this process (default both).
    #[serde(default = "both_stages")]
    pub stages: Vec<StageName>,
    /// Event Hubs.
    pub eventhubs: EventHubsSection,
    /// Blob Storage.
    pub storage: StorageSection,
    /// The FHIR server (transform stage).
    #[serde(default)]
    pub fhir: Option<FhirSection>,
    /// The credential for Event Hubs and Blob Storage.
    #[serde(default)]
    pub azure: AzureSection,
    /// When readings are written.
    #[serde(default)]
    pub flush: FlushSection,
    /// Logs, health and metrics.
    #[serde(default)]
    pub telemetry: TelemetrySection,
}

fn both_stages() -> Vec<StageName> {
    vec![StageName::Normalize, StageName::Transform]
}

/// `[eventhubs]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubsSection {
    /// Fully qualified namespace, `myns.servicebus.windows.net`.
    pub namespace: String,
    /// `amqp://host:port` to connect to instead (tests, private routing).
    #[serde(default)]
    pub custom_endpoint: Option<String>,
    /// The device hub (default `devicedata`).
    #[serde(default = "device_hub")]
    pub device_hub: String,
    /// The normalized hub (default `normalizeddata`).
    #[serde(default = "normalized_hub")]
    pub normalized_hub: String,
    /// Consumer group of the normalize stage (default `normalize`).
    #[serde(default = "normalize_group")]
    pub normalize_consumer_group: String,
    /// Consumer group of the transform stage (default `transform`).
    #[serde(default = "transform_group")]
    pub transform_consumer_group: String,
    /// Load-balancing interval (default 10 s).
    #[serde(default = "ten")]
    pub update_interval_seconds: u64,
    /// How long an unrenewed partition ownership lasts (default 30 s).
    #[serde(default = "thirty")]
    pub partition_expiration_seconds: u64,
}

fn device_hub() -> String {
    "devicedata".into()
}
fn normalized_hub() -> String {
    "normalizeddata".into()
}
fn normalize_group() -> String {
    "normalize".into()
}
fn transform_group() -> String {
    "transform".into()
}
fn ten() -> u64 {
    10
}
fn thirty() -> u64 {
    30
}

/// `[storage]`. Its `Debug` hides the connection string (it holds the account key).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `https://acct.blob.core.windows.net` (with the `[azure]` credential).
    #[serde(default)]
    pub blob_endpoint: Option<String>,
    /// A connection string with an account key instead (Azurite, development); prefer the
    /// environment variable `IOMT_STORAGE_CONNECTION_STRING`.
    #[serde(default)]
    pub connection_string: Option<String>,
    /// Checkpoints and partition ownership (default `checkpoints`).
    #[serde(default = "checkpoints")]
    pub checkpoint_container: String,
    /// Window snapshots (default `state`).
    #[serde(default = "state")]
    pub state_container: String,
    /// Templates (default `templates`).
    #[serde(default = "templates")]
    pub template_container: String,
    /// Dead letters (default `deadletter`).
    #[serde(default = "deadletter")]
    pub deadletter_container: String,
    /// The device mapping blob (default `devicecontent.json`).
    #[serde(default = "device_mapping")]
    pub device_mapping: String,
    /// The FHIR mapping blob (default `fhirmapping.json`).
    #[serde(default = "fhir_mapping")]
    pub fhir_mapping: String,
    /// How often templates are checked for changes (default 30 s).
    #[serde(default = "thirty")]
    pub template_poll_seconds: u64,
}

/// A URL without its query (which may hold a SAS token).
fn without_query(url: &str) -> String {
    url.split('?').next().unwrap_or_default().to_string()
}

impl std::fmt::Debug for StorageSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSection")
            .field("blob_endpoint", &self.blob_endpoint)
            .field(
                "connection_string",
                &self.connection_string.as_ref().map(|_| "(hidden)"),
            )
            .field("checkpoint_container", &self.checkpoint_container)
            .field("state_container", &self.state_container)
            .field("template_container", &self.template_container)
            .field("deadletter_container", &self.deadletter_container)
            .field("device_mapping", &self.device_mapping)
            .field("fhir_mapping", &self.fhir_mapping)
            .field("template_poll_seconds", &self.template_poll_seconds)
            .finish()
    }
}

fn checkpoints() -> String {
    "checkpoints".into()
}
fn state() -> String {
    "state".into()
}
fn templates() -> String {
    "templates".into()
}
fn deadletter() -> String {
    "deadletter".into()
}
fn device_mapping() -> String {
    "devicecontent.json".into()
}
fn fhir_mapping() -> String {
    "fhirmapping.json".into()
}

/// `[fhir]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirSection {
    /// FHIR R4 base URL.
    pub url: String,
    /// `none`, `managed-identity`, `workload-identity`, `client-secret`, `azure-cli`.
    #[serde(default = "managed_identity")]
    pub auth: String,
    /// Client id (user-assigned managed identity, or the app for `client-secret`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Tenant id for `client-secret` (the secret: `AZURE_CLIENT_SECRET`).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Token audience when not the URL.
    #[serde(default)]
    pub audience: Option<String>,
    /// `lookup`, `lookup-with-encounter` or `create`.
    #[serde(default = "lookup")]
    pub identity_mode: String,
    /// Device identifier system.
    #[serde(default)]
    pub default_device_system: Option<String>,
    /// Entries per batch Bundle; 0 = one request per resource (default 100).
    #[serde(default = "hundred")]
    pub batch_size: usize,
    /// Requests in flight (default 4).
    #[serde(default = "four")]
    pub concurrency: usize,
    /// Retry budget of one request (default 60 s).
    #[serde(default = "sixty")]
    pub retry_seconds: u64,
}

fn managed_identity() -> String {
    "managed-identity".into()
}
fn lookup() -> String {
    "lookup".into()
}
fn hundred() -> usize {
    100
}
fn four() -> usize {
    4
}
fn sixty() -> u64 {
    60
}

/// `[azure]`: the credential for Event Hubs and Blob Storage.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureSection {
    /// `managed-identity`, `workload-identity`, `client-secret`, `azure-cli`, or `anonymous`
    /// (only with an `eventhubs.custom_endpoint` that does not check tokens).
    #[serde(default = "managed_identity")]
    pub credential: String,
    /// Client id of a user-assigned identity or app.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Tenant id for `client-secret`.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

impl Default for AzureSection {
    fn default() -> Self {
        AzureSection {
            credential: managed_identity(),
            client_id: None,
            tenant_id: None,
        }
    }
}

/// `[flush]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushSection {
    /// Longest a reading waits before it is written to FHIR (default 5000 ms).
    #[serde(default = "five_thousand")]
    pub max_latency_ms: u64,
    /// How often checkpoints (and snapshots) are written (default 5000 ms).
    #[serde(default = "five_thousand")]
    pub checkpoint_interval_ms: u64,
    /// Write when this many readings wait in a partition (default 20000).
    #[serde(default = "twenty_thousand")]
    pub max_pending: usize,
}

fn five_thousand() -> u64 {
    5000
}
fn twenty_thousand() -> usize {
    20_000
}

impl Default for FlushSection {
    fn default() -> Self {
        FlushSection {
            max_latency_ms: five_thousand(),
            checkpoint_interval_ms: five_thousand(),
            max_pending: twenty_thousand(),
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// Port of `/healthz` and `/metrics` (default 9090; 0 = off).
    #[serde(default = "port")]
    pub port: u16,
    /// `text` or `json`.
    #[serde(default = "text")]
    pub log_format: String,
}

fn port() -> u16 {
    9090
}
fn text() -> String {
    "text".into()
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            port: port(),
            log_format: text(),
        }
    }
}

fn need(problems: &mut Vec<String>, ok: bool, problem: String) {
    if !ok {
        problems.push(problem);
    }
}

/// The configuration sections, for environment overrides.
const SECTIONS: &[&str] = &["eventhubs", "storage", "fhir", "azure", "flush", "telemetry"];

impl Config {
    /// Reads `text` (TOML) and applies the `IOMT_*` variables of `environment` over it.
    pub fn load(text: &str, environment: impl IntoIterator<Item = (String, String)>) -> Result<Config, Vec<String>> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|error| vec![format!("the configuration is not valid TOML: {error}")])?;
        for (name, value) in environment {
            let Some(rest) = name.strip_prefix("IOMT_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            if rest == "stages" {
                let stages: Vec<toml::Value> = value
                    .split(',')
                    .map(|s| toml::Value::String(s.trim().to_string()))
                    .collect();
                table.insert("stages".into(), toml::Value::Array(stages));
                continue;
            }
            let Some(section) = SECTIONS.iter().find(|section| rest.starts_with(&format!("{section}_"))) else {
                continue;
            };
            let key = &rest[section.len() + 1..];
            let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(|v| !v.is_str() || value.starts_with('"'))
                .unwrap_or_else(|| toml::Value::String(value.clone()));
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(section_table) = entry.as_table_mut() {
                section_table.insert(key.to_string(), parsed);
            }
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|error: toml::de::Error| vec![format!("{}", error.message())])?;
        let problems = config.validate();
        if problems.is_empty() { Ok(config) } else { Err(problems) }
    }

    /// Every problem, as `key: what is wrong, how to fix it`.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let eh = &self.eventhubs;
        need(
            &mut problems,
            !self.stages.is_empty(),
            "stages: name at least one of normalize, transform".into(),
        );
        need(
            &mut problems,
            eh.namespace.contains('.') && !eh.namespace.contains("://"),
            format!(
                "eventhubs.namespace: a fully qualified namespace like myns.servicebus.windows.net, got '{}'",
                eh.namespace
            ),
        );
        if let Some(endpoint) = &eh.custom_endpoint {
            need(
                &mut problems,
                endpoint.starts_with("amqp://") || endpoint.starts_with("amqps://"),
                format!("eventhubs.custom_endpoint: an amqp:// or amqps:// URL, got '{endpoint}'"),
            );
        }
        for (key, value) in [
            ("eventhubs.device_hub", &eh.device_hub),
            ("eventhubs.normalized_hub", &eh.normalized_hub),
            ("eventhubs.normalize_consumer_group", &eh.normalize_consumer_group),
            ("eventhubs.transform_consumer_group", &eh.transform_consumer_group),
        ] {
            need(
                &mut problems,
                !value.trim().is_empty(),
                format!("{key}: must not be empty"),
            );
        }
        need(
            &mut problems,
            eh.normalize_consumer_group != eh.transform_consumer_group || eh.device_hub != eh.normalized_hub,
            "eventhubs: each stage needs its own consumer group".into(),
        );
        need(
            &mut problems,
            eh.partition_expiration_seconds > eh.update_interval_seconds && eh.update_interval_seconds > 0,
            "eventhubs.partition_expiration_seconds: must be longer than update_interval_seconds (> 0)".into(),
        );
        let storage = &self.storage;
        need(&mut problems,
            storage.blob_endpoint.is_some() != storage.connection_string.is_some(),
            "storage: give exactly one of blob_endpoint (with the [azure] credential) or connection_string (IOMT_STORAGE_CONNECTION_STRING)".into(),
        );
        if let Some(endpoint) = &storage.blob_endpoint {
            need(
                &mut problems,
                endpoint.starts_with("https://"),
                format!(
                    "storage.blob_endpoint: an https:// URL (an Entra ID credential needs https), got '{endpoint}'"
                ),
            );
        }
        for (key, value) in [
            ("storage.checkpoint_container", &storage.checkpoint_container),
            ("storage.state_container", &storage.state_container),
            ("storage.template_container", &storage.template_container),
            ("storage.deadletter_container", &storage.deadletter_container),
        ] {
            let valid = (3..=63).contains(&value.len())
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !value.starts_with('-')
                && !value.contains("--");
            need(
                &mut problems,
                valid,
                format!("{key}: container names are 3-63 lowercase letters, digits and single dashes, got '{value}'"),
            );
        }
        need(
            &mut problems,
            storage.template_poll_seconds > 0,
            "storage.template_poll_seconds: must be > 0".into(),
        );
        let credentials = [
            "managed-identity",
            "workload-identity",
            "client-secret",
            "azure-cli",
            "anonymous",
        ];
        need(
            &mut problems,
            credentials.contains(&self.azure.credential.as_str()),
            format!(
                "azure.credential: one of {}, got '{}'",
                credentials.join(", "),
                self.azure.credential
            ),
        );
        need(
            &mut problems,
            self.azure.credential != "anonymous" || eh.custom_endpoint.is_some(),
            "azure.credential: anonymous only works with eventhubs.custom_endpoint".into(),
        );
        need(
            &mut problems,
            self.azure.credential != "anonymous" || storage.connection_string.is_some(),
            "azure.credential: anonymous needs storage.connection_string".into(),
        );
        if self.stages.contains(&StageName::Transform) {
            match &self.fhir {
                None => problems.push("fhir: the transform stage needs a [fhir] section with url".into()),
                Some(fhir) => {
                    need(
                        &mut problems,
                        fhir.url.starts_with("https://") || fhir.url.starts_with("http://"),
                        format!(
                            "fhir.url: an http(s) URL like https://myfhir.fhir.azurehealthcareapis.com, got '{}'",
                            fhir.url
                        ),
                    );
                    let auths = [
                        "none",
                        "managed-identity",
                        "workload-identity",
                        "client-secret",
                        "azure-cli",
                    ];
                    need(
                        &mut problems,
                        auths.contains(&fhir.auth.as_str()),
                        format!("fhir.auth: one of {}, got '{}'", auths.join(", "), fhir.auth),
                    );
                    need(
                        &mut problems,
                        fhir.auth != "client-secret" || (fhir.tenant_id.is_some() && fhir.client_id.is_some()),
                        "fhir.auth: client-secret needs fhir.tenant_id and fhir.client_id (and AZURE_CLIENT_SECRET)"
                            .into(),
                    );
                    if let Err(error) = fhir.identity_mode.parse::<IdentityMode>() {
                        need(&mut problems, false, format!("fhir.identity_mode: {error}"));
                    }
                    need(
                        &mut problems,
                        fhir.batch_size <= 500,
                        "fhir.batch_size: at most 500 (the AHDS Bundle limit)".into(),
                    );
                    need(
                        &mut problems,
                        fhir.concurrency > 0,
                        "fhir.concurrency: must be > 0".into(),
                    );
                }
            }
        }
        need(
            &mut problems,
            self.flush.max_latency_ms > 0,
            "flush.max_latency_ms: must be > 0".into(),
        );
        need(
            &mut problems,
            self.flush.checkpoint_interval_ms > 0,
            "flush.checkpoint_interval_ms: must be > 0".into(),
        );
        need(
            &mut problems,
            self.flush.max_pending > 0,
            "flush.max_pending: must be > 0".into(),
        );
        need(
            &mut problems,
            ["text", "json"].contains(&self.telemetry.log_format.as_str()),
            format!(
                "telemetry.log_format: text or json, got '{}'",
                self.telemetry.log_format
            ),
        );
        problems
    }

    /// The settings as `key = value` lines with secrets hidden (for the startup log).
    pub fn describe(&self) -> BTreeMap<&'static str, String> {
        let mut out = BTreeMap::new();
        out.insert("stages", format!("{:?}", self.stages));
        out.insert("eventhubs.namespace", self.eventhubs.namespace.clone());
        out.insert(
            "storage",
            self.storage
                .blob_endpoint
                .as_deref()
                .map_or_else(|| "connection string (hidden)".into(), without_query),
        );
        out.insert(
            "fhir.url",
            self.fhir.as_ref().map(|f| without_query(&f.url)).unwrap_or_default(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [eventhubs]
        namespace = "myns.servicebus.windows.net"
        [storage]
        blob_endpoint = "https://acct.blob.core.windows.net"
        [fhir]
        url = "https://myfhir.fhir.azurehealthcareapis.com"
    "#;

    #[test]
    fn defaults_fill_a_minimal_file() {
        let config = Config::load(MINIMAL, []).unwrap();
        assert_eq!(config.stages, [StageName::Normalize, StageName::Transform]);
        assert_eq!(config.eventhubs.device_hub, "devicedata");
        assert_eq!(config.storage.device_mapping, "devicecontent.json");
        assert_eq!(config.fhir.as_ref().unwrap().batch_size, 100);
        assert_eq!(config.flush.max_latency_ms, 5000);
        assert_eq!(config.azure.credential, "managed-identity");
    }

    #[test]
    fn environment_variables_override_the_file() {
        let config = Config::load(
            MINIMAL,
            [
                ("IOMT_FHIR_URL".to_string(), "http://localhost:8080".to_string()),
                ("IOMT_FLUSH_MAX_LATENCY_MS".to_string(), "250".to_string()),
                ("IOMT_STAGES".to_string(), "transform".to_string()),
                (
                    "IOMT_EVENTHUBS_CUSTOM_ENDPOINT".to_string(),
                    "amqp://127.0.0.1:5672".to_string(),
                ),
                ("UNRELATED".to_string(), "x".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(config.fhir.unwrap().url, "http://localhost:8080");
        assert_eq!(config.flush.max_latency_ms, 250);
        assert_eq!(config.stages, [StageName::Transform]);
        assert_eq!(
            config.eventhubs.custom_endpoint.as_deref(),
            Some("amqp://127.0.0.1:5672")
        );
    }

    #[test]
    fn debug_output_hides_the_account_key() {
        let config = Config::load(
            MINIMAL
                .replace(
                    r#"blob_endpoint = "https://acct.blob.core.windows.net""#,
                    r#"connection_string = "AccountName=acct;AccountKey=c2VjcmV0LWtleQ==""#,
                )
                .as_str(),
            [],
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("c2VjcmV0LWtleQ"), "{shown}");
        assert!(shown.contains("connection_string: Some(\"(hidden)\")"), "{shown}");
        let with_sas = Config::load(
            MINIMAL
                .replace(".windows.net\"", ".windows.net/?sv=2021-06-08&sig=c2lnbmF0dXJl\"")
                .as_str(),
            [],
        )
        .unwrap();
        assert_eq!(with_sas.describe()["storage"], "https://acct.blob.core.windows.net/");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let problems = Config::load(
            r#"
            [eventhubs]
            namespace = "not-a-namespace"
            update_interval_seconds = 30
            partition_expiration_seconds = 10
            [storage]
            state_container = "State_Snapshots"
            [fhir]
            url = "ftp://x"
            identity_mode = "guess"
            [flush]
            max_latency_ms = 0
        "#,
            [],
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "eventhubs.namespace",
                "eventhubs.partition_expiration_seconds",
                "storage",
                "storage.state_container",
                "fhir.url",
                "fhir.identity_mode",
                "flush.max_latency_ms"
            ],
            "{problems:#?}"
        );
        let unknown = Config::load(&format!("{MINIMAL}\n[flush]\nmax_latency = 3"), []).unwrap_err();
        assert!(unknown[0].contains("unknown field `max_latency`"), "{unknown:?}");
    }
}
