//! [`FhirHttpClient`]: the [`FhirApi`] over HTTP with reqwest (one shared client, rustls).
//! Throttling (429), timeouts (408), server errors (5xx) and connection failures are retried with
//! exponential backoff and full jitter, honouring `Retry-After`, within a time budget; other
//! answers are classified for the caller.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, IF_MATCH, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};

use super::auth::TokenSource;
use crate::fhir::Json;
use crate::fhir::identity::{resource_id, version_id};
use crate::pipeline::ports::{BatchReply, BatchRequest, FhirApi, FhirApiError, FhirApiErrorKind};

const FHIR_JSON: &str = "application/fhir+json";

/// Retry timing for transient failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff (doubled per attempt, with full jitter).
    pub initial_delay: Duration,
    /// The longest single wait (a longer `Retry-After` is still honoured).
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

/// Settings of a [`FhirHttpClient`].
#[derive(Debug, Clone)]
pub struct FhirClientConfig {
    /// The FHIR base URL (`https://x.fhir.azurehealthcareapis.com`).
    pub base_url: String,
    /// The time one request may take.
    pub timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl FhirClientConfig {
    /// Defaults for `base_url`: 60 s per request (the original's), the default retry policy.
    pub fn new(base_url: impl Into<String>) -> Self {
        FhirClientConfig {
            base_url: base_url.into(),
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// The FHIR R4 REST client.
pub struct FhirHttpClient {
    http: reqwest::Client,
    base: Url,
    tokens: Option<Arc<TokenSource>>,
    retry: RetryPolicy,
}

impl fmt::Debug for FhirHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FhirHttpClient")
            .field("base", &self.base.as_str())
            .field("authenticated", &self.tokens.is_some())
            .finish_non_exhaustive()
    }
}

/// A response: status, headers and body.
struct Reply {
    status: StatusCode,
    body: String,
}

impl FhirHttpClient {
    /// A client for `config.base_url`, authenticating with `tokens` when given.
    pub fn new(config: &FhirClientConfig, tokens: Option<Arc<TokenSource>>) -> Result<Self, String> {
        let mut base = Url::parse(config.base_url.trim())
            .map_err(|error| format!("the FHIR URL '{}' is not a URL: {error}", config.base_url))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(format!(
                "the FHIR URL must be http(s)://host[/path], e.g. https://myfhir.fhir.azurehealthcareapis.com; got '{}'",
                config.base_url
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|error| format!("cannot build the HTTP client: {error}"))?;
        Ok(FhirHttpClient {
            http,
            base,
            tokens,
            retry: config.retry.clone(),
        })
    }

    /// The token scope for a FHIR base URL: `{audience or base URL}/.default`.
    pub fn scope_for(base_url: &str, audience: Option<&str>) -> String {
        format!("{}/.default", audience.unwrap_or(base_url).trim_end_matches('/'))
    }

    /// `GET metadata`: checks the server answers as FHIR R4.
    pub async fn check(&self) -> Result<String, FhirApiError> {
        let url = self.url("metadata?_summary=true")?;
        let reply = self.send(Method::GET, url, None, None).await?;
        let statement = parse(&reply.body, "metadata")?;
        let version = statement
            .get("fhirVersion")
            .and_then(Json::as_str)
            .unwrap_or("unknown")
            .to_string();
        Ok(version)
    }

    fn url(&self, relative: &str) -> Result<Url, FhirApiError> {
        self.base.join(relative).map_err(|error| {
            FhirApiError::new(
                FhirApiErrorKind::InvalidResponse,
                None,
                format!("cannot build a URL from '{relative}': {error}"),
            )
        })
    }

    /// A `next` link, pointed at our base URL's origin (servers behind gateways or proxies
    /// write links with their own host).
    fn follow(&self, link: &str) -> Result<Url, FhirApiError> {
        let mut url = Url::parse(link).or_else(|_| self.url(link))?;
        if url.origin() != self.base.origin() {
            let _ = url.set_scheme(self.base.scheme());
            let _ = url.set_host(self.base.host_str());
            let _ = url.set_port(self.base.port());
        }
        Ok(url)
    }

    /// Sends a request, retrying transient failures within the time budget.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&[u8]>,
        if_match: Option<&str>,
    ) -> Result<Reply, FhirApiError> {
        let started = Instant::now();
        let what = format!("{method} {}", url.path());
        let mut attempt: u32 = 0;
        let mut refreshed_token = false;
        loop {
            let outcome = self.send_once(&method, &url, body, if_match).await;
            let (wait_hint, failure) = match outcome {
                Ok((status, _, text)) if status.is_success() => {
                    tracing::debug!(request = %what, status = status.as_u16(), attempt, "FHIR request succeeded.");
                    return Ok(Reply { status, body: text });
                }
                Ok((status, headers, text)) => {
                    let error = classify(status, &what, &text);
                    if status == StatusCode::UNAUTHORIZED
                        && !refreshed_token
                        && let Some(tokens) = &self.tokens
                    {
                        // A token revoked or expired early: fetch a new one once.
                        tokens.invalidate().await;
                        refreshed_token = true;
                        continue;
                    }
                    if error.kind != FhirApiErrorKind::Transient {
                        return Err(error);
                    }
                    (retry_after(&headers), error)
                }
                Err(error) => (None, error),
            };
            let backoff = self.backoff(attempt, wait_hint);
            if started.elapsed() + backoff > self.retry.max_elapsed {
                tracing::warn!(request = %what, attempts = attempt + 1, error = %failure, "FHIR request failed; retries exhausted.");
                return Err(FhirApiError::new(
                    FhirApiErrorKind::Transient,
                    failure.status,
                    format!(
                        "{} (gave up after {} attempts in {:.1} s)",
                        failure.message,
                        attempt + 1,
                        started.elapsed().as_secs_f64()
                    ),
                ));
            }
            tracing::debug!(request = %what, attempt, wait_ms = backoff.as_millis() as u64, error = %failure, "Retrying FHIR request.");
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        if_match: Option<&str>,
    ) -> Result<(StatusCode, HeaderMap, String), FhirApiError> {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .header("Accept", FHIR_JSON);
        if let Some(tokens) = &self.tokens {
            let token = tokens.token().await.map_err(|error| {
                FhirApiError::new(
                    FhirApiErrorKind::Unauthorized,
                    None,
                    format!("cannot get a token for {}: {error}", tokens.scope()),
                )
            })?;
            request = request.header(AUTHORIZATION, format!("Bearer {}", token.secret()));
        }
        if let Some(version) = if_match {
            request = request.header(IF_MATCH, format!("W/\"{version}\""));
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, FHIR_JSON).body(body.to_vec());
        }
        let what = || format!("{method} {}", url.path());
        let response = request.send().await.map_err(|error| {
            FhirApiError::new(
                FhirApiErrorKind::Transient,
                None,
                format!("{} failed: {}", what(), describe(error)),
            )
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|error| {
            FhirApiError::new(
                FhirApiErrorKind::Transient,
                Some(status.as_u16()),
                format!("{} failed reading the response: {}", what(), describe(error)),
            )
        })?;
        Ok((status, headers, text))
    }

    /// Full-jitter exponential backoff, or the server's `Retry-After` when longer.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .retry
            .initial_delay
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.retry.max_delay);
        let jittered = Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling.as_secs_f64()));
        match retry_after {
            Some(hint) => hint.max(jittered),
            None => jittered,
        }
    }

    /// One page of a search, and the next page's URL.
    async fn search_page(&self, url: Url, resource_type: &str) -> Result<(Vec<Json>, Option<Url>), FhirApiError> {
        let reply = self.send(Method::GET, url, None, None).await?;
        let bundle = parse(&reply.body, "search")?;
        self.read_searchset(&bundle, resource_type)
    }

    fn read_searchset(&self, bundle: &Json, resource_type: &str) -> Result<(Vec<Json>, Option<Url>), FhirApiError> {
        if bundle.get("resourceType").and_then(Json::as_str) != Some("Bundle") {
            return Err(invalid("a search did not answer with a Bundle"));
        }
        let resources = bundle
            .get("entry")
            .and_then(Json::as_array)
            .unwrap_or_default()
            .iter()
            .filter_map(|entry| entry.get("resource"))
            .filter(|resource| resource.get("resourceType").and_then(Json::as_str) == Some(resource_type))
            .cloned()
            .collect();
        let next = bundle
            .get("link")
            .and_then(Json::as_array)
            .unwrap_or_default()
            .iter()
            .find(|link| link.get("relation").and_then(Json::as_str) == Some("next"))
            .and_then(|link| link.get("url"))
            .and_then(Json::as_str)
            .map(|link| self.follow(link))
            .transpose()?;
        Ok((resources, next))
    }

    /// Reads further pages from `next` until `limit`.
    async fn rest_of_search(
        &self,
        mut found: Vec<Json>,
        mut next: Option<Url>,
        resource_type: &str,
        limit: Option<usize>,
    ) -> Result<Vec<Json>, FhirApiError> {
        while let Some(url) = next {
            if limit.is_some_and(|limit| found.len() >= limit) {
                break;
            }
            let (page, following) = self.search_page(url, resource_type).await?;
            found.extend(page);
            next = following;
        }
        if let Some(limit) = limit {
            found.truncate(limit);
        }
        Ok(found)
    }

    fn search_url(&self, resource_type: &str, params: &[(&str, String)]) -> Result<Url, FhirApiError> {
        let mut url = self.url(resource_type)?;
        url.query_pairs_mut()
            .extend_pairs(params.iter().map(|(name, value)| (*name, value.as_str())));
        Ok(url)
    }
}

#[async_trait]
impl FhirApi for FhirHttpClient {
    async fn search(
        &self,
        resource_type: &str,
        params: &[(&str, String)],
        limit: Option<usize>,
    ) -> Result<Vec<Json>, FhirApiError> {
        let url = self.search_url(resource_type, params)?;
        let (found, next) = self.search_page(url, resource_type).await?;
        self.rest_of_search(found, next, resource_type, limit).await
    }

    async fn put(&self, resource: &Json, if_match: Option<&str>) -> Result<Json, FhirApiError> {
        let (resource_type, id) = address(resource)?;
        let url = self.url(&format!("{resource_type}/{id}"))?;
        let reply = self
            .send(Method::PUT, url, Some(resource.to_json().as_bytes()), if_match)
            .await?;
        stored(&reply.body, reply.status, resource)
    }

    async fn batch(&self, requests: Vec<BatchRequest>) -> Result<Vec<Result<BatchReply, FhirApiError>>, FhirApiError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut entries = Vec::with_capacity(requests.len());
        for request in &requests {
            entries.push(match request {
                BatchRequest::Search { resource_type, params } => {
                    let url = self.search_url(
                        resource_type,
                        &params.iter().map(|(n, v)| (n.as_str(), v.clone())).collect::<Vec<_>>(),
                    )?;
                    let relative = format!("{resource_type}?{}", url.query().unwrap_or(""));
                    format!(r#"{{"request":{{"method":"GET","url":{}}}}}"#, json_string(&relative))
                }
                BatchRequest::Put { resource, if_match } => {
                    let (resource_type, id) = address(resource)?;
                    let if_match = if_match
                        .as_deref()
                        .map(|version| format!(r#","ifMatch":{}"#, json_string(&format!("W/\"{version}\""))))
                        .unwrap_or_default();
                    format!(
                        r#"{{"resource":{},"request":{{"method":"PUT","url":{}{if_match}}}}}"#,
                        resource.to_json(),
                        json_string(&format!("{resource_type}/{id}"))
                    )
                }
            });
        }
        let body = format!(
            r#"{{"resourceType":"Bundle","type":"batch","entry":[{}]}}"#,
            entries.join(",")
        );
        let reply = self
            .send(Method::POST, self.base.clone(), Some(body.as_bytes()), None)
            .await?;
        let bundle = parse(&reply.body, "batch")?;
        let replies = bundle
            .get("entry")
            .and_then(Json::as_array)
            .filter(|entries| entries.len() == requests.len())
            .ok_or_else(|| invalid("the batch response does not have one entry per request"))?;
        let mut results = Vec::with_capacity(replies.len());
        for (request, entry) in requests.iter().zip(replies) {
            results.push(self.batch_entry(request, entry).await);
        }
        Ok(results)
    }
}

impl FhirHttpClient {
    async fn batch_entry(&self, request: &BatchRequest, entry: &Json) -> Result<BatchReply, FhirApiError> {
        let status_text = entry
            .get("response")
            .and_then(|response| response.get("status"))
            .and_then(Json::as_str)
            .ok_or_else(|| invalid("a batch response entry has no status"))?;
        let code: u16 = status_text
            .split_whitespace()
            .next()
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid("a batch response entry status is not an HTTP status"))?;
        let status =
            StatusCode::from_u16(code).map_err(|_| invalid("a batch response entry status is out of range"))?;
        let what = match request {
            BatchRequest::Search { resource_type, .. } => format!("batch GET {resource_type}"),
            BatchRequest::Put { resource, .. } => {
                format!("batch PUT {}", address(resource).map(|(t, _)| t).unwrap_or("?"))
            }
        };
        if !status.is_success() {
            let outcome = entry
                .get("response")
                .and_then(|response| response.get("outcome"))
                .map(Json::to_json)
                .unwrap_or_default();
            return Err(classify(status, &what, &outcome));
        }
        match request {
            BatchRequest::Search { resource_type, .. } => {
                let bundle = entry
                    .get("resource")
                    .ok_or_else(|| invalid("a batch search entry has no Bundle"))?;
                let (found, next) = self.read_searchset(bundle, resource_type)?;
                Ok(BatchReply::Found(
                    self.rest_of_search(found, next, resource_type, None).await?,
                ))
            }
            BatchRequest::Put { resource, .. } => match entry.get("resource") {
                Some(stored) => Ok(BatchReply::Stored(stored.clone())),
                // The server did not echo the resource: keep ours with the version it reports.
                None => {
                    let etag = entry
                        .get("response")
                        .and_then(|response| response.get("etag"))
                        .and_then(Json::as_str)
                        .unwrap_or("");
                    Ok(BatchReply::Stored(with_version(resource, etag)))
                }
            },
        }
    }
}

/// `resourceType` and `id` of a resource to write.
fn address(resource: &Json) -> Result<(&str, &str), FhirApiError> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Json::as_str)
        .ok_or_else(|| invalid("a resource to write has no resourceType"))?;
    let id = resource_id(resource).ok_or_else(|| invalid("a resource to write has no id"))?;
    Ok((resource_type, id))
}

/// The resource a write stored: the server's echo, or ours when it sent none.
fn stored(body: &str, status: StatusCode, sent: &Json) -> Result<Json, FhirApiError> {
    if body.trim().is_empty() {
        return Ok(sent.clone());
    }
    let echoed = parse(body, "write")?;
    if echoed.get("resourceType").and_then(Json::as_str) == sent.get("resourceType").and_then(Json::as_str) {
        Ok(echoed)
    } else {
        tracing::debug!(status = status.as_u16(), "FHIR write answered without the resource.");
        Ok(sent.clone())
    }
}

/// `resource` with `meta.versionId` from an ETag `W/"3"`.
fn with_version(resource: &Json, etag: &str) -> Json {
    let version = etag.trim_start_matches("W/").trim_matches('"');
    let mut resource = resource.clone();
    if !version.is_empty()
        && version_id(&resource).is_none()
        && let Some(object) = resource.as_object_mut()
    {
        let mut meta = object
            .get("meta")
            .and_then(Json::as_object)
            .cloned()
            .unwrap_or_default();
        meta.set("versionId", Json::str(version));
        object.set("meta", Json::Object(meta));
    }
    resource
}

fn parse(body: &str, what: &str) -> Result<Json, FhirApiError> {
    Json::parse(body).map_err(|error| invalid(&format!("the {what} response is not JSON ({error})")))
}

fn invalid(what: &str) -> FhirApiError {
    FhirApiError::new(
        FhirApiErrorKind::InvalidResponse,
        None,
        format!("Invalid FHIR response: {what}."),
    )
}

/// What a non-success status means for the caller.
fn classify(status: StatusCode, what: &str, body: &str) -> FhirApiError {
    let kind = match status.as_u16() {
        408 | 429 | 500..=599 => FhirApiErrorKind::Transient,
        409 | 412 => FhirApiErrorKind::Conflict,
        401 | 403 => FhirApiErrorKind::Unauthorized,
        _ => FhirApiErrorKind::Rejected,
    };
    let diagnostics = outcome_text(body);
    let message = if diagnostics.is_empty() {
        format!("{what} answered {status}")
    } else {
        format!("{what} answered {status}: {diagnostics}")
    };
    FhirApiError::new(kind, Some(status.as_u16()), message)
}

/// The diagnostics of an OperationOutcome, short; empty for anything else.
fn outcome_text(body: &str) -> String {
    let Ok(outcome) = Json::parse(body) else {
        return String::new();
    };
    let issues = outcome.get("issue").and_then(Json::as_array).unwrap_or_default();
    let texts: Vec<&str> = issues
        .iter()
        .filter_map(|issue| {
            issue
                .get("diagnostics")
                .and_then(Json::as_str)
                .or_else(|| issue.get("details")?.get("text")?.as_str())
        })
        .collect();
    let mut text = texts.join("; ");
    if text.len() > 500 {
        let cut = (0..=500).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (date.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

/// What went wrong, without the URL (its query holds identifiers: patient data).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "could not connect".into()
    } else {
        // The source chain says what broke (connection reset, closed before a response).
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    crate::json::write_json_string(text, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_for_the_caller() {
        let kind = |code: u16| classify(StatusCode::from_u16(code).unwrap(), "GET /x", "").kind;
        for code in [408, 429, 500, 502, 503, 504] {
            assert_eq!(kind(code), FhirApiErrorKind::Transient, "{code}");
        }
        assert_eq!(kind(409), FhirApiErrorKind::Conflict);
        assert_eq!(kind(412), FhirApiErrorKind::Conflict);
        assert_eq!(kind(401), FhirApiErrorKind::Unauthorized);
        assert_eq!(kind(403), FhirApiErrorKind::Unauthorized);
        for code in [400, 404, 405, 410, 422] {
            assert_eq!(kind(code), FhirApiErrorKind::Rejected, "{code}");
        }
    }

    #[test]
    fn rejections_carry_the_servers_diagnostics() {
        let error = classify(
            StatusCode::BAD_REQUEST,
            "PUT /Observation/1",
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"status is required"}]}"#,
        );
        assert_eq!(
            error.message,
            "PUT /Observation/1 answered 400 Bad Request: status is required"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        let later = (chrono::Utc::now() + chrono::TimeDelta::seconds(30)).to_rfc2822();
        headers.insert(RETRY_AFTER, later.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let client = FhirHttpClient::new(&FhirClientConfig::new("http://127.0.0.1:1"), None).unwrap();
        for attempt in 0..30 {
            let wait = client.backoff(attempt, None);
            let ceiling = Duration::from_millis(200)
                .saturating_mul(2u32.saturating_pow(attempt.min(20)))
                .min(Duration::from_secs(10));
            assert!(wait <= ceiling, "attempt {attempt}: {wait:?} > {ceiling:?}");
        }
        assert!(client.backoff(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }

    #[test]
    fn next_links_are_pointed_at_our_origin() {
        let client = FhirHttpClient::new(&FhirClientConfig::new("http://127.0.0.1:9000/fhir"), None).unwrap();
        let url = client
            .follow("http://internal:8080/fhir/Observation?x=1&_cursor=abc")
            .unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:9000/fhir/Observation?x=1&_cursor=abc");
    }

    #[test]
    fn scopes_default_to_the_fhir_url() {
        assert_eq!(
            FhirHttpClient::scope_for("https://x.fhir.azurehealthcareapis.com/", None),
            "https://x.fhir.azurehealthcareapis.com/.default"
        );
        assert_eq!(
            FhirHttpClient::scope_for("https://x/", Some("https://audience")),
            "https://audience/.default"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_an_example() {
        let error = FhirHttpClient::new(&FhirClientConfig::new("ftp://x"), None).unwrap_err();
        assert!(error.contains("https://myfhir.fhir.azurehealthcareapis.com"), "{error}");
    }
}
