//! Blob Storage through `azure_storage_blob`: partition snapshots (ETag-guarded), dead-letter
//! records, and the templates the worker reads. Authentication is a managed identity (or another
//! Entra ID credential) in production, or a storage account key, turned into an account SAS
//! (the SDK has no shared-key signing), for Azurite and development accounts. The SAS is signed
//! afresh for every call, valid for an hour, so a long-running worker never holds an expired one.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{ClientOptions, Context, Etag, Request, RequestContent, StatusCode, Url};
use azure_storage_blob::models::{BlobClientGetPropertiesResultHeaders, BlockBlobClientUploadOptions};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::pipeline::deadletter::DeadLetterRecord;
use crate::pipeline::ports::{DeadLetterStore, StateError, StateStore, TransientError};

/// The well-known key of Azurite's `devstoreaccount1` (public, documented by Microsoft).
pub const DEVELOPMENT_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How to authenticate to the storage account.
#[derive(Clone)]
pub enum StorageAuth {
    /// An Entra ID credential (managed identity, workload identity…); needs https.
    Credential(Arc<dyn TokenCredential>),
    /// The account key: requests carry an account SAS signed with it.
    AccountKey {
        /// Account name.
        account: String,
        /// Base64 account key.
        key: String,
    },
}

impl std::fmt::Debug for StorageAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageAuth::Credential(_) => f.write_str("Credential"),
            StorageAuth::AccountKey { account, .. } => f
                .debug_struct("AccountKey")
                .field("account", account)
                .finish_non_exhaustive(),
        }
    }
}

/// A storage account's Blob endpoint.
#[derive(Debug, Clone)]
pub struct BlobStorage {
    endpoint: Url,
    auth: StorageAuth,
}

impl BlobStorage {
    /// The Blob endpoint `endpoint` (`https://acct.blob.core.windows.net`, or Azurite's
    /// `http://127.0.0.1:10000/devstoreaccount1`).
    pub fn new(endpoint: &str, auth: StorageAuth) -> Result<Self, String> {
        let mut endpoint = Url::parse(endpoint.trim())
            .map_err(|error| format!("the storage endpoint '{endpoint}' is not a URL: {error}"))?;
        if !endpoint.path().ends_with('/') {
            let path = format!("{}/", endpoint.path());
            endpoint.set_path(&path);
        }
        Ok(BlobStorage { endpoint, auth })
    }

    /// From a connection string: `UseDevelopmentStorage=true`, or
    /// `AccountName=…;AccountKey=…[;BlobEndpoint=…][;DefaultEndpointsProtocol=…][;EndpointSuffix=…]`.
    pub fn from_connection_string(text: &str) -> Result<Self, String> {
        let parts: Vec<(String, String)> = text
            .split(';')
            .filter(|part| !part.trim().is_empty())
            .filter_map(|part| {
                part.split_once('=')
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let get = |name: &str| {
            parts
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        if get("usedevelopmentstorage").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
            return Self::new(
                "http://127.0.0.1:10000/devstoreaccount1",
                StorageAuth::AccountKey {
                    account: "devstoreaccount1".into(),
                    key: DEVELOPMENT_ACCOUNT_KEY.into(),
                },
            );
        }
        let account = get("accountname").ok_or("the connection string has no AccountName")?;
        let key = get("accountkey").ok_or("the connection string has no AccountKey")?;
        let endpoint = match get("blobendpoint") {
            Some(endpoint) => endpoint,
            None => format!(
                "{}://{account}.blob.{}",
                get("defaultendpointsprotocol").unwrap_or_else(|| "https".into()),
                get("endpointsuffix").unwrap_or_else(|| "core.windows.net".into())
            ),
        };
        Self::new(&endpoint, StorageAuth::AccountKey { account, key })
    }

    /// A client for container `name`.
    pub fn container(&self, name: &str) -> Result<BlobContainerClient, String> {
        let url = self
            .endpoint
            .join(name)
            .map_err(|error| format!("bad container name '{name}': {error}"))?;
        let (credential, options) = match &self.auth {
            StorageAuth::Credential(credential) => (Some(credential.clone()), None),
            StorageAuth::AccountKey { account, key } => {
                // Fail here, not on the first request, when the key is unusable.
                account_sas(account, key, Utc::now())?;
                let signing = AccountSasPolicy {
                    account: account.clone(),
                    key: key.clone(),
                };
                let options = BlobContainerClientOptions {
                    client_options: ClientOptions {
                        per_call_policies: vec![Arc::new(signing)],
                        ..Default::default()
                    },
                    ..Default::default()
                };
                (None, Some(options))
            }
        };
        BlobContainerClient::new(url, credential, options)
            .map_err(|error| format!("cannot use container '{name}': {error}"))
    }

    /// Creates container `name` unless it exists.
    pub async fn ensure_container(&self, name: &str) -> Result<BlobContainerClient, String> {
        let container = self.container(name)?;
        match container.create(None).await {
            Ok(_) => Ok(container),
            Err(error) if error.http_status() == Some(StatusCode::Conflict) => Ok(container),
            Err(error) => Err(format!("cannot create container '{name}': {error}")),
        }
    }
}

/// Adds an account SAS, valid for an hour, to each call (its retries reuse it).
struct AccountSasPolicy {
    account: String,
    key: String,
}

impl std::fmt::Debug for AccountSasPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSasPolicy")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Policy for AccountSasPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let sas = account_sas(&self.account, &self.key, Utc::now() + chrono::TimeDelta::hours(1))
            .map_err(|error| azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, error))?;
        let url = request.url_mut();
        let query = match url.query() {
            Some(query) if !query.is_empty() => format!("{query}&{sas}"),
            _ => sas,
        };
        url.set_query(Some(&query));
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// An account SAS for the Blob service (all resource types; read, write, delete, list, add,
/// create, update, process), valid until `expiry`.
pub fn account_sas(account: &str, key: &str, expiry: DateTime<Utc>) -> Result<String, String> {
    let version = "2021-06-08";
    let permissions = "rwdlacup";
    let expiry = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    // accountname \n permissions \n services \n resource types \n start \n expiry \n ip \n
    // protocols \n version \n encryption scope \n
    let to_sign = format!("{account}\n{permissions}\nb\nsco\n\n{expiry}\n\nhttps,http\n{version}\n\n");
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| "the storage account key is not base64".to_string())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| "the storage account key is empty".to_string())?;
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    Ok(format!(
        "sv={version}&ss=b&srt=sco&sp={permissions}&se={}&spr=https,http&sig={}",
        encode(&expiry),
        encode(&signature)
    ))
}

fn status(error: &azure_core::Error) -> Option<StatusCode> {
    error.http_status()
}

/// Downloads a blob: its bytes and ETag, or `None` when it does not exist.
pub async fn download(container: &BlobContainerClient, name: &str) -> Result<Option<(Vec<u8>, String)>, String> {
    let blob = container.blob_client(name);
    match blob.download(None).await {
        Ok(result) => {
            let etag = result
                .properties
                .etag
                .as_ref()
                .map(|etag| etag.to_string())
                .unwrap_or_default();
            let bytes = result
                .body
                .collect()
                .await
                .map_err(|error| format!("reading {name} failed: {error}"))?;
            Ok(Some((bytes.to_vec(), etag)))
        }
        Err(error) if status(&error) == Some(StatusCode::NotFound) => Ok(None),
        Err(error) => Err(format!("downloading {name} failed: {error}")),
    }
}

/// The ETag of a blob, or `None` when it does not exist (cheap change detection).
pub async fn etag(container: &BlobContainerClient, name: &str) -> Result<Option<String>, String> {
    match container.blob_client(name).get_properties(None).await {
        Ok(properties) => Ok(properties
            .etag()
            .map_err(|error| format!("reading {name}'s ETag failed: {error}"))?
            .map(|etag| etag.to_string())),
        Err(error) if status(&error) == Some(StatusCode::NotFound) => Ok(None),
        Err(error) => Err(format!("reading {name}'s properties failed: {error}")),
    }
}

/// Uploads a blob, overwriting it.
pub async fn upload(container: &BlobContainerClient, name: &str, data: Vec<u8>) -> Result<(), String> {
    container
        .blob_client(name)
        .upload(RequestContent::from(data), None)
        .await
        .map(|_| ())
        .map_err(|error| format!("uploading {name} failed: {error}"))
}

/// Window snapshots as blobs `{name}`, written with `If-Match` (or `If-None-Match: *`).
pub struct BlobStateStore {
    container: BlobContainerClient,
}

impl std::fmt::Debug for BlobStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStateStore")
            .field("container", &container_name(&self.container))
            .finish()
    }
}

/// A container's URL without its query (which may hold a SAS).
fn container_name(container: &BlobContainerClient) -> String {
    let mut url = container.url().clone();
    url.set_query(None);
    url.to_string()
}

impl BlobStateStore {
    /// Snapshots in `container` (which must exist).
    pub fn new(container: BlobContainerClient) -> Self {
        BlobStateStore { container }
    }
}

#[async_trait]
impl StateStore for BlobStateStore {
    async fn load(&self, name: &str) -> Result<Option<(Vec<u8>, String)>, StateError> {
        download(&self.container, name).await.map_err(StateError::Transient)
    }

    async fn save(&self, name: &str, data: &[u8], expected: Option<&str>) -> Result<String, StateError> {
        let options = BlockBlobClientUploadOptions {
            if_match: expected.map(|tag| Etag::from(tag.to_string())),
            if_none_match: expected.is_none().then(|| Etag::from("*".to_string())),
            ..Default::default()
        };
        match self
            .container
            .blob_client(name)
            .upload(RequestContent::from(data.to_vec()), Some(options))
            .await
        {
            Ok(result) => Ok(result.etag.map(|etag| etag.to_string()).unwrap_or_default()),
            Err(error)
                if matches!(
                    status(&error),
                    Some(StatusCode::PreconditionFailed | StatusCode::Conflict)
                ) =>
            {
                Err(StateError::Conflict)
            }
            Err(error) => Err(StateError::Transient(format!("saving {name} failed: {error}"))),
        }
    }
}

/// Dead-letter records as JSON blobs named by stage, time and source position.
pub struct BlobDeadLetterStore {
    container: BlobContainerClient,
}

impl std::fmt::Debug for BlobDeadLetterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobDeadLetterStore")
            .field("container", &container_name(&self.container))
            .finish()
    }
}

impl BlobDeadLetterStore {
    /// Records in `container` (which must exist).
    pub fn new(container: BlobContainerClient) -> Self {
        BlobDeadLetterStore { container }
    }
}

#[async_trait]
impl DeadLetterStore for BlobDeadLetterStore {
    async fn write(&self, records: &[DeadLetterRecord]) -> Result<(), TransientError> {
        for record in records {
            let name = record.name(&crate::adapters::local::record_discriminator(record));
            let json = serde_json::to_vec_pretty(record).expect("records serialize");
            upload(&self.container, &name, json).await.map_err(TransientError)?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<(String, DeadLetterRecord)>, TransientError> {
        let mut names = Vec::new();
        let mut pager = self
            .container
            .list_blobs(None)
            .map_err(|error| TransientError(format!("listing dead letters failed: {error}")))?;
        while let Some(item) = pager
            .try_next()
            .await
            .map_err(|error| TransientError(format!("listing dead letters failed: {error}")))?
        {
            if let Some(name) = item.name {
                names.push(name);
            }
        }
        names.sort();
        let mut records = Vec::with_capacity(names.len());
        for name in names {
            let Some((bytes, _)) = download(&self.container, &name).await.map_err(TransientError)? else {
                continue;
            };
            if let Ok(record) = serde_json::from_slice::<DeadLetterRecord>(&bytes) {
                records.push((name, record));
            }
        }
        Ok(records)
    }

    async fn remove(&self, name: &str) -> Result<(), TransientError> {
        match self.container.blob_client(name).delete(None).await {
            Ok(_) => Ok(()),
            Err(error) if status(&error) == Some(StatusCode::NotFound) => Ok(()),
            Err(error) => Err(TransientError(format!("removing {name} failed: {error}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_sas_matches_the_documented_signature() {
        // The string to sign and the signature are reproducible from the documented algorithm:
        // HMAC-SHA256 over the fields, keyed with the decoded account key.
        let expiry = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sas = account_sas("devstoreaccount1", DEVELOPMENT_ACCOUNT_KEY, expiry).unwrap();
        assert!(
            sas.starts_with("sv=2021-06-08&ss=b&srt=sco&sp=rwdlacup&se=2030-01-01T00%3A00%3A00Z&spr=https,http&sig=")
        );
        let signature = sas.rsplit("sig=").next().unwrap();
        let key = base64::engine::general_purpose::STANDARD
            .decode(DEVELOPMENT_ACCOUNT_KEY)
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"devstoreaccount1\nrwdlacup\nb\nsco\n\n2030-01-01T00:00:00Z\n\nhttps,http\n2021-06-08\n\n");
        let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(
            signature,
            expected.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
        );
    }

    #[test]
    fn connection_strings_name_the_endpoint_and_key() {
        let dev = BlobStorage::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(dev.endpoint.as_str(), "http://127.0.0.1:10000/devstoreaccount1/");
        let custom = BlobStorage::from_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(custom.endpoint.as_str(), "https://acct.blob.core.windows.net/");
        assert!(format!("{custom:?}").contains("acct") && !format!("{custom:?}").contains("a2V5"));
        assert!(BlobStorage::from_connection_string("AccountName=acct").is_err());
    }
}
