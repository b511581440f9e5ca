//! Bearer tokens for the FHIR server through `azure_identity`: managed identity (system or
//! user-assigned), workload identity, a client secret, or the developer's Azure CLI login. Tokens
//! are cached until five minutes before they expire and never logged.

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::{Secret, TokenCredential};
use azure_core::time::{Duration as TimeDuration, OffsetDateTime};
use azure_identity::{
    AzureCliCredential, ClientSecretCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use tokio::sync::Mutex;

/// How the connector authenticates to the FHIR server.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum FhirAuth {
    /// No `Authorization` header (local and test servers).
    #[default]
    None,
    /// The Azure managed identity: system-assigned, or the user-assigned one with this client id.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
    /// Workload identity federation (AKS): `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity,
    /// A service principal with a client secret.
    ClientSecret {
        /// Directory (tenant) id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// The secret.
        secret: String,
    },
    /// The identity logged in to the Azure CLI (`az login`), for developers.
    AzureCli,
}

impl fmt::Debug for FhirAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FhirAuth::None => f.write_str("None"),
            FhirAuth::ManagedIdentity { client_id } => {
                f.debug_struct("ManagedIdentity").field("client_id", client_id).finish()
            }
            FhirAuth::WorkloadIdentity => f.write_str("WorkloadIdentity"),
            FhirAuth::ClientSecret {
                tenant_id, client_id, ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            FhirAuth::AzureCli => f.write_str("AzureCli"),
        }
    }
}

impl FhirAuth {
    /// The credential for this choice, or `None` for no authentication.
    pub fn credential(&self) -> azure_core::Result<Option<Arc<dyn TokenCredential>>> {
        Ok(match self {
            FhirAuth::None => None,
            FhirAuth::ManagedIdentity { client_id } => Some(ManagedIdentityCredential::new(Some(
                ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    ..Default::default()
                },
            ))?),
            FhirAuth::WorkloadIdentity => Some(WorkloadIdentityCredential::new(Some(
                WorkloadIdentityCredentialOptions::default(),
            ))?),
            FhirAuth::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => Some(ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret.clone()),
                None,
            )?),
            FhirAuth::AzureCli => Some(AzureCliCredential::new(None)?),
        })
    }
}

/// Bearer tokens for one scope, cached.
pub struct TokenSource {
    credential: Arc<dyn TokenCredential>,
    scope: String,
    cached: Mutex<Option<(Secret, OffsetDateTime)>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Tokens from `credential` for `scope` (e.g. `https://x.fhir.azurehealthcareapis.com/.default`).
    pub fn new(credential: Arc<dyn TokenCredential>, scope: String) -> Self {
        TokenSource {
            credential,
            scope,
            cached: Mutex::new(None),
        }
    }

    /// The scope tokens are requested for.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// A valid token: the cached one unless it expires within five minutes.
    pub async fn token(&self) -> azure_core::Result<Secret> {
        let mut cached = self.cached.lock().await;
        if let Some((token, expires_on)) = cached.as_ref()
            && *expires_on - OffsetDateTime::now_utc() > TimeDuration::minutes(5)
        {
            return Ok(token.clone());
        }
        let fresh = self.credential.get_token(&[self.scope.as_str()], None).await?;
        *cached = Some((fresh.token.clone(), fresh.expires_on));
        Ok(fresh.token)
    }

    /// Forgets the cached token (after the server refused it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}
