//! Authentication without Azure: managed identity through a local App Service token endpoint
//! (`IDENTITY_ENDPOINT`), a client secret through an injected HTTP transport. The proxy in front of
//! the FHIR server checks the bearer token arrives, and that it never shows up in the output.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use azure_core::http::headers::Headers;
use azure_core::http::{AsyncRawResponse, ClientOptions, HttpClient, Request, StatusCode, Transport};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use iomt_connector::adapters::fhir_http::{FhirClientConfig, FhirHttpClient, TokenSource};
use iomt_connector::pipeline::ports::FhirApi;
use serde_json::json;

use crate::support::fhir::{fhir_url, heart_rate, put, unique};
use crate::support::servers::{Fault, Proxy, StaticServer};
use crate::util::{TempDir, iomt};

#[tokio::test]
async fn managed_identity_tokens_reach_the_fhir_server() {
    let expires = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).timestamp();
    let token_server = StaticServer::start(
        json!({"access_token": "mi-token-7f3a", "expires_on": expires.to_string(), "resource": "fhir", "token_type": "Bearer"})
            .to_string(),
    )
    .await;
    let proxy = Proxy::start(&fhir_url(), |_, _, _| Fault::Pass).await;
    let device = unique("mi-device");
    let api = crate::support::fhir::client(&fhir_url());
    let patient = unique("mi-patient");
    put(&*api, json!({"resourceType": "Patient", "id": patient})).await;
    put(
        &*api,
        json!({"resourceType": "Device", "id": unique("d"), "identifier": [{"value": device}],
               "patient": {"reference": format!("Patient/{patient}")}}),
    )
    .await;
    let dir = TempDir::new("mi");
    let input = dir.path().join("m.jsonl");
    std::fs::write(&input, heart_rate(&device, None, "2024-03-01T08:00:00Z", 70).to_json()).unwrap();
    let output = tokio::task::spawn_blocking({
        let proxy_url = proxy.url.clone();
        let token_url = format!("{}/msi/token", token_server.url);
        move || {
            iomt()
                .args(["transform", "--fhir-mapping"])
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/templates/json-device/fhirmapping.json"
                ))
                .arg("--input")
                .arg(&input)
                .args([
                    "--fhir-url",
                    &proxy_url,
                    "--auth",
                    "managed-identity",
                    "--client-id",
                    "11111111-2222-3333-4444-555555555555",
                ])
                .env("IDENTITY_ENDPOINT", token_url)
                .env("IDENTITY_HEADER", "header-secret-9c1")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["created"], 1);

    let seen = proxy.seen();
    assert!(seen.len() >= 3, "device search, observation search, write: {seen:?}");
    assert!(
        seen.iter()
            .any(|r| r.method == "GET" && r.path.starts_with("/Device?identifier="))
    );
    // The write: a batch Bundle (the default) posted to the base URL.
    assert!(seen.iter().any(|r| r.method == "POST" && r.path == "/"), "{seen:?}");
    for request in &seen {
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer mi-token-7f3a"),
            "{request:?}"
        );
    }
    let token_requests = token_server.requests.lock().unwrap().clone();
    assert_eq!(token_requests.len(), 1, "the token is cached");
    let (path, headers, _) = &token_requests[0];
    let resource = url_encode(&proxy.url);
    assert!(path.contains(&format!("resource={resource}")), "{path}");
    assert!(
        path.contains("client_id=11111111-2222-3333-4444-555555555555"),
        "{path}"
    );
    assert!(headers.contains("x-identity-header: header-secret-9c1"), "{headers}");
    let printed = format!("{stderr}{}", String::from_utf8_lossy(&output.stdout));
    assert!(!printed.contains("mi-token-7f3a"), "the token never reaches the output");
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An injected identity transport: answers every token request, recording it.
#[derive(Debug, Default)]
struct TokenTransport {
    requests: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl HttpClient for TokenTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let body = azure_core::Bytes::from(request.body());
        self.requests
            .lock()
            .unwrap()
            .push((request.url().to_string(), String::from_utf8_lossy(&body).to_string()));
        let reply =
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": "cs-token-41d"});
        Ok(AsyncRawResponse::from_bytes(
            StatusCode::Ok,
            Headers::new(),
            reply.to_string(),
        ))
    }
}

#[tokio::test]
async fn client_secret_tokens_reach_the_fhir_server() {
    let proxy = Proxy::start(&fhir_url(), |_, _, _| Fault::Pass).await;
    let transport = Arc::new(TokenTransport::default());
    let credential = ClientSecretCredential::new(
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "app-client-id".into(),
        azure_core::credentials::Secret::new("s3cr3t-value"),
        Some(ClientSecretCredentialOptions {
            client_options: ClientOptions {
                transport: Some(Transport::new(transport.clone())),
                ..Default::default()
            },
        }),
    )
    .unwrap();
    let scope = FhirHttpClient::scope_for(&proxy.url, None);
    let tokens = Arc::new(TokenSource::new(credential, scope.clone()));
    let client = FhirHttpClient::new(&FhirClientConfig::new(&proxy.url), Some(tokens)).unwrap();
    for _ in 0..3 {
        client
            .search("Device", &[("identifier", unique("nobody"))], None)
            .await
            .unwrap();
    }
    let seen = proxy.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer cs-token-41d")),
        "{seen:?}"
    );
    let requests = transport.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "the token is reused");
    let (url, body) = &requests[0];
    assert_eq!(
        url,
        "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token"
    );
    assert!(body.contains("client_secret=s3cr3t-value"), "{body}");
    assert!(body.contains(&format!("scope={}", url_encode(&scope))), "{body}");
    assert!(!format!("{client:?}").contains("cs-token"), "Debug output has no token");
}
