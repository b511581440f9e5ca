//! Credentials for Event Hubs and Blob Storage through `azure_identity` (there is no
//! `DefaultAzureCredential` in the Rust SDK, so the kind is chosen by configuration).

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration, OffsetDateTime};
use azure_identity::{
    AzureCliCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

/// A credential of `kind`: `managed-identity` (user-assigned with `client_id`),
/// `workload-identity`, `client-secret` (`tenant_id`, `client_id`, `AZURE_CLIENT_SECRET`),
/// `azure-cli`, or `anonymous` (a placeholder token for endpoints that do not check it).
pub fn credential(
    kind: &str,
    client_id: Option<&str>,
    tenant_id: Option<&str>,
) -> Result<Arc<dyn TokenCredential>, String> {
    let built: azure_core::Result<Arc<dyn TokenCredential>> = match kind {
        "managed-identity" => ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.map(|id| UserAssignedId::ClientId(id.to_string())),
            ..Default::default()
        }))
        .map(|credential| credential as Arc<dyn TokenCredential>),
        "workload-identity" => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            client_id: client_id.map(str::to_string),
            tenant_id: tenant_id.map(str::to_string),
            ..Default::default()
        }))
        .map(|credential| credential as Arc<dyn TokenCredential>),
        "client-secret" => {
            let (Some(client_id), Some(tenant_id)) = (client_id, tenant_id) else {
                return Err("client-secret needs a client id and a tenant id".into());
            };
            let secret = std::env::var("AZURE_CLIENT_SECRET")
                .map_err(|_| "client-secret needs AZURE_CLIENT_SECRET".to_string())?;
            azure_identity::ClientSecretCredential::new(tenant_id, client_id.to_string(), secret.into(), None)
                .map(|credential| credential as Arc<dyn TokenCredential>)
        }
        "azure-cli" => AzureCliCredential::new(None).map(|credential| credential as Arc<dyn TokenCredential>),
        "anonymous" => Ok(Arc::new(AnonymousCredential)),
        other => return Err(format!("unknown credential kind '{other}'")),
    };
    built.map_err(|error| format!("cannot set up the {kind} credential: {error}"))
}

/// A placeholder token, for local endpoints (a test Event Hubs endpoint) that do not check it.
#[derive(Debug)]
pub struct AnonymousCredential;

#[async_trait]
impl TokenCredential for AnonymousCredential {
    async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            "anonymous",
            OffsetDateTime::now_utc() + Duration::hours(1),
        ))
    }
}
