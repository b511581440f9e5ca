//! The Blob Storage adapter against Azurite (`IOMT_TEST_BLOB_URL`, started by `scripts/test.sh`),
//! through the real `azure_storage_blob` client with an account SAS.

use chrono::Utc;
use iomt_connector::adapters::blob::{
    BlobDeadLetterStore, BlobStateStore, BlobStorage, DEVELOPMENT_ACCOUNT_KEY, StorageAuth,
};
use iomt_connector::pipeline::deadletter::{DeadLetterRecord, Origin, PayloadKind, Stage};
use iomt_connector::pipeline::ports::{DeadLetterStore, StateError, StateStore};

use crate::support::fhir::unique;

/// The Azurite account under test.
pub fn storage() -> BlobStorage {
    let url = std::env::var("IOMT_TEST_BLOB_URL").unwrap_or_else(|_| {
        panic!("IOMT_TEST_BLOB_URL is not set: run the tests with scripts/test.sh (it starts Azurite)")
    });
    BlobStorage::new(
        &url,
        StorageAuth::AccountKey {
            account: "devstoreaccount1".into(),
            key: DEVELOPMENT_ACCOUNT_KEY.into(),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn snapshots_are_written_only_over_the_version_read() {
    let container = storage().ensure_container(&unique("state")).await.unwrap();
    let store = BlobStateStore::new(container);
    assert_eq!(store.load("transform/0.json").await.unwrap(), None);
    let first = store.save("transform/0.json", b"one", None).await.unwrap();
    assert_eq!(
        store.save("transform/0.json", b"again", None).await,
        Err(StateError::Conflict),
        "If-None-Match: *"
    );
    let second = store.save("transform/0.json", b"two", Some(&first)).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(
        store.save("transform/0.json", b"stale", Some(&first)).await,
        Err(StateError::Conflict),
        "a stale ETag loses"
    );
    let (data, tag) = store.load("transform/0.json").await.unwrap().unwrap();
    assert_eq!(data, b"two");
    assert_eq!(tag, second);
}

#[tokio::test]
async fn dead_letters_are_listed_and_removed() {
    let container = storage().ensure_container(&unique("deadletter")).await.unwrap();
    let store = BlobDeadLetterStore::new(container);
    let record = |offset: &str, payload: &[u8]| {
        DeadLetterRecord::new(
            Stage::Normalize,
            "InvalidDataFormatException",
            "not JSON",
            &Origin {
                partition: "3".into(),
                offset: offset.into(),
                sequence_number: Some(offset.parse().unwrap()),
                enqueued_time: Some(Utc::now()),
            },
            PayloadKind::DeviceEvent,
            payload,
            serde_json::Map::new(),
            serde_json::Map::new(),
            Utc::now(),
        )
    };
    store
        .write(&[record("10", b"{bad"), record("11", b"\xff\xfe")])
        .await
        .unwrap();
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].0.starts_with("normalize/"), "{}", listed[0].0);
    assert_eq!(listed[0].1.payload.as_deref(), Some("{bad"));
    assert_eq!(listed[1].1.payload_bytes(), b"\xff\xfe");
    store.remove(&listed[0].0).await.unwrap();
    assert_eq!(store.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_anonymous_client_is_refused() {
    // Without the SAS, Azurite answers 403: the adapter really authenticates.
    let url = std::env::var("IOMT_TEST_BLOB_URL").unwrap();
    let name = unique("private");
    storage().ensure_container(&name).await.unwrap();
    let anonymous = azure_storage_blob::BlobContainerClient::new(
        azure_core::http::Url::parse(&format!("{url}/{name}")).unwrap(),
        None,
        None,
    )
    .unwrap();
    let error = anonymous.get_properties(None).await.unwrap_err();
    assert!(matches!(error.http_status().map(u16::from), Some(401 | 403)), "{error}");
}

#[tokio::test]
async fn every_call_carries_a_freshly_signed_short_lived_sas() {
    let azurite = std::env::var("IOMT_TEST_BLOB_URL").unwrap();
    let origin = azurite.trim_end_matches("/devstoreaccount1").to_string();
    let proxy = crate::support::servers::Proxy::start(&origin, |_, _, _| crate::support::servers::Fault::Pass).await;
    let storage = BlobStorage::new(
        &format!("{}/devstoreaccount1", proxy.url),
        StorageAuth::AccountKey {
            account: "devstoreaccount1".into(),
            key: DEVELOPMENT_ACCOUNT_KEY.into(),
        },
    )
    .unwrap();
    let store = BlobStateStore::new(storage.ensure_container(&unique("sas")).await.unwrap());
    store.save("a.json", b"1", None).await.unwrap();
    assert!(store.load("a.json").await.unwrap().is_some());
    let seen = proxy.seen();
    assert!(seen.len() >= 3, "{seen:?}");
    let now = Utc::now();
    for request in seen {
        let url = reqwest::Url::parse(&format!("http://x{}", request.path)).unwrap();
        let signatures = url.query_pairs().filter(|(name, _)| name == "sig").count();
        assert_eq!(signatures, 1, "one SAS per request: {}", request.path);
        let expiry = url.query_pairs().find(|(name, _)| name == "se").unwrap().1.to_string();
        let expiry = chrono::DateTime::parse_from_rfc3339(&expiry).unwrap();
        let left = expiry.with_timezone(&Utc) - now;
        assert!(
            left <= chrono::TimeDelta::hours(1) && left > chrono::TimeDelta::minutes(55),
            "signed for the call, not for days: {left}"
        );
    }
}
