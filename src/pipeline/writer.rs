//! Persisting a batch of Measurements as Observations (compat.md §12): identities resolved,
//! windows built, each Observation found by identifier (cache, then search with an exact
//! identifier match), created with `PUT` at its hashed id or merged and written with `If-Match`,
//! re-read and merged again on 409/412, and not written at all when nothing changed.
//!
//! Windows that share an identifier (within a batch) are folded into one write. Writes go one
//! request per resource, or in `batch` Bundles of a configurable size; an entry that fails in a
//! Bundle is handled on its own.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream;
use futures::{FutureExt, StreamExt};

use crate::fhir::group::{MeasurementGroup, ObservationGroup, group_measurements};
use crate::fhir::identity::version_id;
use crate::fhir::observation::{ResourceIds, identifier_value};
use crate::fhir::template::CodeValueTemplate;
use crate::fhir::transform::{GroupFailure, Upsert, find_by_identifier, plan_windows, upsert};
use crate::fhir::{FhirError, FhirErrorKind, FhirTemplateSet, Json, SERVICE_SYSTEM};
use crate::model::Measurement;
use crate::pipeline::identity::{GroupIdentity, IdentityResolver, ResolveError};
use crate::pipeline::ports::{BatchReply, BatchRequest, FhirApi, FhirApiError, FhirApiErrorKind};

/// How Observations are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSettings {
    /// Entries per `batch` Bundle (default 100: measured fastest, see `cargo bench --bench
    /// persist`); 0 writes one request per resource.
    pub batch_size: usize,
    /// Requests (or Bundles) in flight at once.
    pub concurrency: usize,
    /// Re-reads after a 409/412 before the write is given up (the original: 2).
    pub conflict_retries: usize,
    /// Observations kept in the cache (the original: 5000).
    pub cache_capacity: u64,
    /// How long a cached Observation is trusted (the original: 1 hour).
    pub cache_ttl: Duration,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            batch_size: 100,
            concurrency: 4,
            conflict_retries: 2,
            cache_capacity: 5000,
            cache_ttl: Duration::from_secs(3600),
        }
    }
}

/// What a batch write did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteReport {
    /// Observations created.
    pub created: usize,
    /// Observations updated.
    pub updated: usize,
    /// Observations that already held the data: no write.
    pub unchanged: usize,
    /// Creates that found another writer had created the Observation at the same moment
    /// (`versionId` 2 after a create; the original's `FHIRResourceContention`).
    pub contention: usize,
    /// Writes retried after a 409/412.
    pub conflicts_retried: usize,
    /// Quantity or String readings superseded by a later one of their window (decision P5).
    pub superseded: usize,
    /// Measurements that could not be written, and why (data problems, never server outages).
    pub failures: Vec<GroupFailure>,
}

/// Writes Observations through a [`FhirApi`].
#[derive(Debug)]
pub struct ObservationWriter {
    api: Arc<dyn FhirApi>,
    identities: IdentityResolver,
    settings: WriterSettings,
    cache: moka::future::Cache<String, Arc<Json>>,
}

/// One window to apply to an Observation.
struct WindowWork<'t> {
    template: &'t CodeValueTemplate,
    window: ObservationGroup,
    type_name: String,
    ids: ResourceIds,
}

/// Everything a batch does to one Observation identifier.
struct Item<'t> {
    identifier: String,
    windows: Vec<WindowWork<'t>>,
}

/// A write to send: which item, whether it creates, the resource and the expected version.
#[derive(Clone)]
struct PendingWrite {
    index: usize,
    created: bool,
    resource: Json,
    version: Option<String>,
}

/// What an item's windows make of the stored Observation.
enum Planned {
    Create(Json),
    Update {
        resource: Json,
        version: Option<String>,
    },
    Unchanged(Json),
    /// Every window failed.
    Nothing,
}

impl ObservationWriter {
    /// A writer over `api`.
    pub fn new(api: Arc<dyn FhirApi>, identities: IdentityResolver, settings: WriterSettings) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .time_to_live(settings.cache_ttl)
            .build();
        ObservationWriter {
            api,
            identities,
            settings,
            cache,
        }
    }

    /// Writes one batch of Measurements. Data problems become [`WriteReport::failures`]; a
    /// server that stays unavailable (after the client's retries) fails the call, and the batch
    /// can be written again later: merging the same readings twice changes nothing.
    pub async fn write(
        &self,
        templates: &FhirTemplateSet,
        measurements: &[Measurement],
        issued: DateTime<Utc>,
    ) -> Result<WriteReport, FhirApiError> {
        let mut report = WriteReport::default();
        let groups = group_measurements(measurements);
        let identities = self.resolve_identities(&groups).await;
        let mut items: Vec<Item<'_>> = Vec::new();
        for (group, identity) in groups.iter().zip(identities) {
            let ids = match identity {
                Ok(ids) => ids,
                Err(ResolveError::Data(error)) => {
                    report.failures.push(failure(error, &group.all));
                    continue;
                }
                Err(ResolveError::Server(error)) => return Err(error),
            };
            let plan = match plan_windows(templates, group, measurements) {
                Ok(plan) => plan,
                Err(error) => {
                    report.failures.push(failure(error, &group.all));
                    continue;
                }
            };
            for window in plan.windows {
                let identifier = identifier_value(&ids, group.type_name, &window);
                let work = WindowWork {
                    template: plan.template,
                    window,
                    type_name: group.type_name.to_string(),
                    ids: ids.clone(),
                };
                match items.iter_mut().find(|item| item.identifier == identifier) {
                    Some(item) => item.windows.push(work),
                    None => items.push(Item {
                        identifier,
                        windows: vec![work],
                    }),
                }
            }
        }
        let existing = self.fetch_existing(&items).await?;
        let mut writes: Vec<(usize, Planned)> = Vec::new();
        // What each item's windows did, kept until its write settles: an item written again on
        // its own is merged afresh, and only that last attempt counts.
        let mut tallies: Vec<Tally> = items.iter().map(|_| Tally::default()).collect();
        for (index, (item, found)) in items.iter().zip(existing).enumerate() {
            match found {
                Ok(base) => {
                    let (planned, tally) = apply(item, base.as_deref(), issued);
                    match planned {
                        Planned::Unchanged(observation) => {
                            report.unchanged += 1;
                            self.remember(&item.identifier, observation).await;
                            report.absorb(tally);
                        }
                        Planned::Nothing => report.absorb(tally),
                        planned => {
                            tallies[index] = tally;
                            writes.push((index, planned));
                        }
                    }
                }
                Err(error) => report.failures.push(failure(error, &members(item))),
            }
        }
        let retry = self.write_planned(&items, writes, &mut tallies, &mut report).await?;
        for index in retry {
            self.write_with_retries(&items[index], issued, &mut report).await?;
        }
        Ok(report)
    }

    /// Identities of every group, resolved concurrently (one request per device at a time).
    async fn resolve_identities(&self, groups: &[MeasurementGroup<'_>]) -> Vec<Result<ResourceIds, ResolveError>> {
        // The futures are boxed and built in a loop rather than a closure: closures over
        // borrowed items trip rustc's higher-ranked `Send` check when a caller is spawned.
        let mut resolving = Vec::with_capacity(groups.len());
        for group in groups {
            resolving.push(
                self.identities
                    .resolve(GroupIdentity {
                        device_id: group.device_id,
                        patient_id: group.patient_id,
                        encounter_id: group.encounter_id,
                    })
                    .boxed(),
            );
        }
        stream::iter(resolving)
            .buffered(self.settings.concurrency.max(1))
            .collect()
            .await
    }

    /// The stored Observation of each item: from the cache, else by identifier search (in
    /// Bundles when batching). Data errors are per item.
    async fn fetch_existing(
        &self,
        items: &[Item<'_>],
    ) -> Result<Vec<Result<Option<Arc<Json>>, FhirError>>, FhirApiError> {
        let mut results: Vec<Option<Result<Option<Arc<Json>>, FhirError>>> = Vec::with_capacity(items.len());
        let mut misses = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match self.cache.get(&key(&item.identifier)).await {
                Some(cached) => results.push(Some(Ok(Some(cached)))),
                None => {
                    results.push(None);
                    misses.push(index);
                }
            }
        }
        if self.settings.batch_size > 0 {
            for chunk in misses.chunks(self.settings.batch_size) {
                let requests = chunk
                    .iter()
                    .map(|&index| BatchRequest::Search {
                        resource_type: "Observation".into(),
                        params: vec![("identifier".into(), key(&items[index].identifier))],
                    })
                    .collect();
                // `None`: search that item again on its own (with the client's retries), so
                // that a Bundle or entry the server refuses fails only the items it must.
                let replies: Vec<Option<Vec<Json>>> = match self.api.batch(requests).await {
                    Ok(replies) => replies
                        .into_iter()
                        .map(|reply| match reply {
                            Ok(BatchReply::Found(found)) => Some(found),
                            Ok(BatchReply::Stored(_)) | Err(_) => None,
                        })
                        .collect(),
                    Err(error) if error.is_data_fault() => Vec::new(),
                    Err(error) => return Err(error),
                };
                let replies = replies.into_iter().chain(std::iter::repeat_with(|| None));
                for (&index, reply) in chunk.iter().zip(replies) {
                    let identifier = &items[index].identifier;
                    results[index] = Some(match reply {
                        Some(found) => exact_match(identifier, found),
                        None => self.search_existing(identifier).await?,
                    });
                }
            }
        } else {
            let mut searches = Vec::with_capacity(misses.len());
            for &index in &misses {
                searches.push(self.search_existing(&items[index].identifier).boxed());
            }
            let searched: Vec<_> = stream::iter(searches)
                .buffered(self.settings.concurrency.max(1))
                .collect()
                .await;
            for (&index, found) in misses.iter().zip(searched) {
                results[index] = Some(found?);
            }
        }
        Ok(results
            .into_iter()
            .map(|result| result.expect("every item is looked up"))
            .collect())
    }

    /// The stored Observation with `identifier`, searched on its own. A search the server
    /// refuses fails only this item; an unavailable server fails the call.
    async fn search_existing(&self, identifier: &str) -> Result<Result<Option<Arc<Json>>, FhirError>, FhirApiError> {
        match self
            .api
            .search("Observation", &[("identifier", key(identifier))], None)
            .await
        {
            Ok(found) => Ok(exact_match(identifier, found)),
            Err(error) if error.is_data_fault() => Ok(Err(rejected(&error))),
            Err(error) => Err(error),
        }
    }

    /// Caches a stored Observation, if it has a `versionId` to guard the next write with.
    async fn remember(&self, identifier: &str, observation: Json) {
        if version_id(&observation).is_some() {
            self.cache.insert(key(identifier), Arc::new(observation)).await;
        } else {
            self.cache.invalidate(&key(identifier)).await;
        }
    }

    /// Writes the planned Observations; returns the items to write again on their own (a
    /// conflict, a Bundle entry that failed for a transient reason, or a Bundle the server
    /// refused as a whole).
    async fn write_planned(
        &self,
        items: &[Item<'_>],
        writes: Vec<(usize, Planned)>,
        tallies: &mut [Tally],
        report: &mut WriteReport,
    ) -> Result<Vec<usize>, FhirApiError> {
        let mut retry = Vec::new();
        let pending: Vec<PendingWrite> = writes
            .into_iter()
            .filter_map(|(index, planned)| match planned {
                Planned::Create(resource) => Some(PendingWrite {
                    index,
                    created: true,
                    resource,
                    version: None,
                }),
                Planned::Update { resource, version } => Some(PendingWrite {
                    index,
                    created: false,
                    resource,
                    version,
                }),
                Planned::Unchanged(_) | Planned::Nothing => None,
            })
            .collect();
        if self.settings.batch_size > 0 {
            let chunks: Vec<Vec<PendingWrite>> = pending.chunks(self.settings.batch_size).map(<[_]>::to_vec).collect();
            let mut bundles = Vec::with_capacity(chunks.len());
            for chunk in chunks {
                let requests: Vec<BatchRequest> = chunk
                    .iter()
                    .map(|write| BatchRequest::Put {
                        resource: write.resource.clone(),
                        if_match: write.version.clone(),
                    })
                    .collect();
                let api = self.api.clone();
                bundles.push(async move { (chunk, api.batch(requests).await) }.boxed());
            }
            let sent: Vec<_> = stream::iter(bundles)
                .buffered(self.settings.concurrency.max(1))
                .collect()
                .await;
            for (chunk, replies) in sent {
                let replies = match replies {
                    Ok(replies) => replies,
                    Err(error) if error.is_data_fault() => Vec::new(),
                    Err(error) => return Err(error),
                };
                // A write without a reply is written again on its own.
                let replies = replies.into_iter().map(Some).chain(std::iter::repeat_with(|| None));
                for (write, reply) in chunk.into_iter().zip(replies) {
                    let outcome = match reply {
                        Some(Ok(BatchReply::Stored(stored))) => Ok(stored),
                        Some(Ok(BatchReply::Found(_))) | None => Err(unexpected_reply()),
                        Some(Err(error)) => Err(error),
                    };
                    let tally = std::mem::take(&mut tallies[write.index]);
                    if self
                        .settle(&items[write.index], write.created, outcome, tally, report)
                        .await
                    {
                        retry.push(write.index);
                    }
                }
            }
        } else {
            let mut puts = Vec::with_capacity(pending.len());
            for write in pending {
                let api = self.api.clone();
                puts.push(
                    async move {
                        let outcome = api.put(&write.resource, write.version.as_deref()).await;
                        (write, outcome)
                    }
                    .boxed(),
                );
            }
            let sent: Vec<_> = stream::iter(puts)
                .buffered(self.settings.concurrency.max(1))
                .collect()
                .await;
            for (write, outcome) in sent {
                let tally = std::mem::take(&mut tallies[write.index]);
                if self
                    .settle(&items[write.index], write.created, outcome, tally, report)
                    .await
                {
                    retry.push(write.index);
                }
            }
        }
        Ok(retry)
    }

    /// Records a write's outcome; true when the item must be written again on its own (a
    /// conflict, or a failure retrying may cure).
    async fn settle(
        &self,
        item: &Item<'_>,
        created: bool,
        outcome: Result<Json, FhirApiError>,
        tally: Tally,
        report: &mut WriteReport,
    ) -> bool {
        match outcome {
            Ok(stored) => {
                self.record_stored(item, created, stored, report).await;
                report.absorb(tally);
                false
            }
            Err(error) if error.kind == FhirApiErrorKind::Rejected => {
                reject(item, &error, tally, report);
                false
            }
            Err(error) => {
                if error.kind == FhirApiErrorKind::Conflict {
                    report.conflicts_retried += 1;
                }
                self.cache.invalidate(&key(&item.identifier)).await;
                true
            }
        }
    }

    async fn record_stored(&self, item: &Item<'_>, created: bool, stored: Json, report: &mut WriteReport) {
        if created {
            report.created += 1;
            if version_id(&stored) == Some("2") {
                report.contention += 1;
            }
        } else {
            report.updated += 1;
        }
        self.remember(&item.identifier, stored).await;
    }

    /// Writes one item on its own: re-read the stored Observation, apply the windows, write;
    /// on 409/412 again, up to `conflict_retries` more times. Fails the call only when the
    /// server is unavailable or the conflicts go on: the batch is then written again later.
    async fn write_with_retries(
        &self,
        item: &Item<'_>,
        issued: DateTime<Utc>,
        report: &mut WriteReport,
    ) -> Result<(), FhirApiError> {
        let mut attempts = 0;
        loop {
            let base = match self.search_existing(&item.identifier).await? {
                Ok(base) => base,
                Err(error) => {
                    report.failures.push(failure(error, &members(item)));
                    return Ok(());
                }
            };
            let (planned, tally) = apply(item, base.as_deref(), issued);
            let (created, resource, version) = match planned {
                Planned::Create(resource) => (true, resource, None),
                Planned::Update { resource, version } => (false, resource, version),
                Planned::Unchanged(observation) => {
                    report.unchanged += 1;
                    self.remember(&item.identifier, observation).await;
                    report.absorb(tally);
                    return Ok(());
                }
                Planned::Nothing => {
                    report.absorb(tally);
                    return Ok(());
                }
            };
            match self.api.put(&resource, version.as_deref()).await {
                Ok(stored) => {
                    self.record_stored(item, created, stored, report).await;
                    report.absorb(tally);
                    return Ok(());
                }
                Err(error) if error.kind == FhirApiErrorKind::Conflict && attempts < self.settings.conflict_retries => {
                    attempts += 1;
                    report.conflicts_retried += 1;
                }
                Err(error) if error.is_data_fault() => {
                    reject(item, &error, tally, report);
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// What an item's windows did while being applied: readings superseded, windows that failed.
#[derive(Default)]
struct Tally {
    superseded: usize,
    failures: Vec<GroupFailure>,
}

impl WriteReport {
    fn absorb(&mut self, tally: Tally) {
        self.superseded += tally.superseded;
        self.failures.extend(tally.failures);
    }
}

/// Records that the server refused an item's write: its windows that had failed already keep
/// their own reason, the rest fail with the server's.
fn reject(item: &Item<'_>, error: &FhirApiError, tally: Tally, report: &mut WriteReport) {
    let already: Vec<usize> = tally
        .failures
        .iter()
        .flat_map(|failed| failed.members.iter().copied())
        .collect();
    let rest: Vec<usize> = members(item)
        .into_iter()
        .filter(|member| !already.contains(member))
        .collect();
    report.failures.extend(tally.failures);
    if !rest.is_empty() {
        report.failures.push(failure(rejected(error), &rest));
    }
}

/// Folds an item's windows into its stored Observation (or a new one).
fn apply(item: &Item<'_>, base: Option<&Json>, issued: DateTime<Utc>) -> (Planned, Tally) {
    let mut tally = Tally::default();
    let mut current: Option<Json> = base.cloned();
    let mut changed = false;
    for work in &item.windows {
        match upsert(
            work.template,
            &work.window,
            &work.type_name,
            &work.ids,
            current.as_ref(),
            issued,
        ) {
            Ok(Upsert::Create(built) | Upsert::Update(built)) => {
                tally.superseded += built.superseded;
                current = Some(built.observation);
                changed = true;
            }
            Ok(Upsert::Unchanged) => {}
            Err(error) => tally.failures.push(failure(error, &work.window.members)),
        }
    }
    let planned = match (base, current) {
        (_, None) => Planned::Nothing,
        (None, Some(resource)) => Planned::Create(resource),
        (Some(base), Some(resource)) if changed => Planned::Update {
            resource,
            version: version_id(base).map(str::to_string),
        },
        (Some(_), Some(resource)) => Planned::Unchanged(resource),
    };
    (planned, tally)
}

/// The search result that carries exactly the wanted identifier (servers may match only a
/// prefix of long identifiers): none, one, or an error for several.
fn exact_match(identifier: &str, mut found: Vec<Json>) -> Result<Option<Arc<Json>>, FhirError> {
    Ok(find_by_identifier(identifier, &found)?.map(|index| Arc::new(found.swap_remove(index))))
}

/// The cache key and search token of an Observation identifier: `{system}|{value}`.
fn key(identifier: &str) -> String {
    format!("{SERVICE_SYSTEM}|{identifier}")
}

fn members(item: &Item<'_>) -> Vec<usize> {
    let mut members: Vec<usize> = item
        .windows
        .iter()
        .flat_map(|work| work.window.members.iter().copied())
        .collect();
    members.sort_unstable();
    members.dedup();
    members
}

fn failure(error: FhirError, members: &[usize]) -> GroupFailure {
    GroupFailure {
        error,
        members: members.to_vec(),
    }
}

fn rejected(error: &FhirApiError) -> FhirError {
    FhirError::new(FhirErrorKind::RequestRejected, error.message.clone())
}

fn unexpected_reply() -> FhirApiError {
    FhirApiError::new(
        FhirApiErrorKind::InvalidResponse,
        None,
        "Invalid FHIR response: a batch entry answered with the wrong kind of result.",
    )
}
