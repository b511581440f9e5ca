//! A `TokenCredential` that hands out a fixed token: the Event Hubs SDK 0.15 authenticates only
//! with a credential, and the test endpoint accepts any token.

use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration, OffsetDateTime};

/// Returns the same token for every scope, valid for an hour from each call.
#[derive(Debug, Clone)]
pub struct StaticTokenCredential {
    token: String,
}

impl StaticTokenCredential {
    /// A credential returning `"test-token"`.
    pub fn new() -> Arc<StaticTokenCredential> {
        StaticTokenCredential::with_token("test-token")
    }

    /// A credential returning `token`.
    pub fn with_token(token: &str) -> Arc<StaticTokenCredential> {
        Arc::new(StaticTokenCredential {
            token: token.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticTokenCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.token.clone(),
            OffsetDateTime::now_utc() + Duration::hours(1),
        ))
    }
}
