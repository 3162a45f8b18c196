//! `psi-fetch` and `psi-query` jobs: unbalanced PSI against a list whose owner ran `consort
//! psi-setup` once ([`consort_protocols::psi::unbalanced`] is the protocol and what each side
//! learns; [`consort_engine::unbalanced`] the files).
//!
//! - **psi-fetch** (requester: the querier, no dataset of its own; responder: the list owner,
//!   whose grant on the list must include `psi-fetch` and share every label column of the setup):
//!   the owner sends its current evaluated set, preceded by one frame naming the label columns;
//!   the querier checks every size against its limits and keeps the set sealed at
//!   `DIR/unbalanced/fetched/PEER/DATASET.set` (the job's output).
//! - **psi-query** (requester: the querier with its query dataset; responder: the owner, grant
//!   `psi-query`): the querier sends the setup id of its fetched set and its blinded items; the
//!   owner refuses a superseded setup, a query larger than the size the querier declared (itself
//!   bounded by the grant's `max_peer_rows`), a query past the grant's `queries` budget (counted in
//!   the job table, before anything is logged) or past the setup's own budget (which bounds the
//!   false-positive rate, checked before the first point is read). The querier writes its matched
//!   rows followed by the labels, named `PEER.COLUMN`, where `--out` says (sealed unless
//!   `encrypt_outputs = false`). The owner writes nothing; neither side loads the list.
//!
//! The owner's files: `DIR/unbalanced/DATASET.key` (the key and setup parameters: all a query
//! reads) and `DIR/unbalanced/DATASET.set` (the evaluated list: what a fetch sends).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::anyhow;
use bytes::Bytes;
use consort_api::{JobKind, JobState};
use consort_engine::unbalanced::{self as files, SetupKey};
use consort_engine::{Dataset, PsiProtocol};
use consort_protocols::psi::unbalanced::{self as ubal, FetchLimits, OprfSet};
use consort_protocols::{Channel, Items, Reveal, Role, cpu};

use super::{Ask, Failure, Job, Kind, Outcome, Output, RunCtx};
use crate::identity::hex;
use crate::state::NodeState;

/// The owner's and the querier's directory of unbalanced PSI files, under the node directory.
pub const DIR: &str = "unbalanced";
/// Largest fetch a querier accepts, in bytes of records (10^8 items with 12-byte tags and no
/// labels are 1.2 GB).
pub const MAX_FETCH_BYTES: u64 = 64 << 30;
/// Most list items a querier accepts in a fetch.
pub const MAX_FETCH_ITEMS: u64 = crate::config::DEFAULT_MAX_PEER_ROWS;
/// Largest label-column frame a querier reads.
const MAX_COLUMNS_FRAME: usize = 16 << 10;

/// The owner's key file of `dataset`.
pub fn key_path(dir: &Path, dataset: &str) -> PathBuf {
    dir.join(DIR).join(format!("{dataset}.key"))
}

/// The owner's set file of `dataset`.
pub fn set_path(dir: &Path, dataset: &str) -> PathBuf {
    dir.join(DIR).join(format!("{dataset}.set"))
}

/// The querier's copy of `peer`'s list `dataset`.
pub fn fetched_path(dir: &Path, peer: &str, dataset: &str) -> PathBuf {
    dir.join(DIR).join("fetched").join(peer).join(format!("{dataset}.set"))
}

/// The owner's current setup of `dataset`, for the peer: "none" names what to do, not a path.
fn current_setup(state: &NodeState, dataset: &str) -> Result<SetupKey, String> {
    let path = key_path(&state.dir, dataset);
    if !path.exists() {
        return Err(format!("dataset '{dataset}' has no unbalanced PSI setup (its owner runs `consort psi-setup`)"));
    }
    files::read_key(&path, &state.storage.key).map_err(|e| {
        tracing::warn!("cannot read the unbalanced PSI setup of '{dataset}': {e}");
        format!("the unbalanced PSI setup of dataset '{dataset}' cannot be read (its operator sees why in its log)")
    })
}

fn no_params(params: &str) -> Result<(), String> {
    if params.is_empty() { Ok(()) } else { Err("psi-fetch and psi-query jobs take no parameters".into()) }
}

// ------------------------------------------------------------------------------------------------
// psi-fetch
// ------------------------------------------------------------------------------------------------

pub struct PsiFetch;

impl Kind for PsiFetch {
    fn kind(&self) -> JobKind {
        JobKind::PsiFetch
    }

    fn requester_dataset(&self) -> bool {
        false
    }

    fn plan(&self, state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        no_params(&ask.params)?;
        let columns = match ask.role {
            Role::Requester => Vec::new(),
            // The setup's label columns: the grant must share each (checked by the policy next).
            Role::Responder => current_setup(state, &ask.dataset)?.columns,
        };
        Ok(Box::new(FetchPlan { columns }))
    }
}

struct FetchPlan {
    columns: Vec<String>,
}

#[tonic::async_trait]
impl Job for FetchPlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        None
    }

    fn wire_params(&self) -> String {
        String::new()
    }

    fn audited(&self) -> serde_json::Value {
        serde_json::json!({ "label_columns": self.columns })
    }

    fn shared_columns(&self) -> &[String] {
        &self.columns
    }

    fn loads_dataset(&self) -> bool {
        false
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        match ctx.ask.role {
            Role::Responder => serve_fetch(ctx).await,
            Role::Requester => receive_fetch(ctx).await,
        }
    }
}

async fn serve_fetch(ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
    let started = Instant::now();
    ctx.handle.stage("read the evaluated list", 0, 0);
    let (key_file, set_file) = (key_path(&ctx.state.dir, &ctx.ask.dataset), set_path(&ctx.state.dir, &ctx.ask.dataset));
    let storage = ctx.state.storage.key.clone();
    let (setup, set) = cpu::run(move || {
        let setup = files::read_key(&key_file, &storage)?;
        let (set, _) = files::read_set(&set_file, &storage)?;
        Ok::<_, consort_engine::DataError>((setup, set))
    })
    .await
    .map_err(|e| {
        Failure::context("the owner could not read its evaluated list (its operator sees why in its log)", e)
    })?;
    if set.id() != setup.params.id() {
        return Err(Failure::shared(anyhow!("the owner's setup is being replaced; fetch again in a moment")));
    }
    let read = started.elapsed().as_secs_f64();
    ctx.handle.stage("send the evaluated list", 0, set.params.items);
    let columns = serde_json::to_vec(&setup.columns).expect("serializable");
    ctx.channel.send(Bytes::from(columns)).await.map_err(Failure::shared)?;
    let started = Instant::now();
    let bytes = ubal::serve_fetch(&*ctx.channel, &set).await.map_err(Failure::shared)?;
    Ok(Outcome {
        local_rows: set.params.items,
        stages: vec![("read".into(), read), ("send".into(), started.elapsed().as_secs_f64())],
        summary: serde_json::json!({
            "setup_id": hex(&set.id()),
            "items": set.params.items,
            "record_bytes": set.params.record_bytes(),
            "bytes": bytes,
        })
        .to_string(),
        ..Outcome::default()
    })
}

async fn receive_fetch(ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
    let started = Instant::now();
    ctx.handle.stage("receive the evaluated list", 0, 0);
    let frame = ctx.channel.recv().await.map_err(Failure::shared)?;
    let columns = label_columns(&frame).map_err(|e| Failure::shared(anyhow!(e)))?;
    let limits = FetchLimits {
        max_items: MAX_FETCH_ITEMS.min(ctx.limits.max_peer_rows),
        max_bytes: MAX_FETCH_BYTES,
        max_label_bytes: super::psi::MAX_PAYLOAD_BYTES_PER_KEY,
    };
    let set = ubal::fetch(&*ctx.channel, &limits).await.map_err(Failure::shared)?;
    if columns.is_empty() != (set.params.label_width == 0) {
        return Err(Failure::shared(anyhow!("the owner named label columns that do not match its labels")));
    }
    let received = started.elapsed().as_secs_f64();
    let path = fetched_path(&ctx.state.dir, &ctx.ask.peer, &ctx.ask.peer_dataset);
    super::will_write(ctx.handle, &path).await;
    let (items, id, bytes) = (set.params.items, set.id(), set.records.len() as u64);
    let storage = ctx.state.storage.key.clone();
    let target = path.clone();
    cpu::run(move || {
        std::fs::create_dir_all(target.parent().expect("a parent")).map_err(|e| {
            consort_engine::DataError::Invalid(format!("cannot create the fetched lists' directory: {e}"))
        })?;
        files::write_set(&target, &set, &columns, &storage)
    })
    .await
    .map_err(Failure::private)?;
    forget_cached(&path);
    let shown = format!("{DIR}/fetched/{}/{}.set", ctx.ask.peer, ctx.ask.peer_dataset);
    Ok(Outcome {
        output: Some(Output { path, shown, rows: items }),
        peer_rows: items,
        stages: vec![("receive".into(), received)],
        summary: serde_json::json!({ "setup_id": hex(&id), "items": items, "bytes": bytes }).to_string(),
        ..Outcome::default()
    })
}

/// The owner's label-column frame: a JSON list of valid column names (the same rules as a
/// payload join's peer columns), bounded.
fn label_columns(frame: &[u8]) -> Result<Vec<String>, String> {
    if frame.len() > MAX_COLUMNS_FRAME {
        return Err("the owner's label-column frame is too large".into());
    }
    let columns: Vec<String> =
        serde_json::from_slice(frame).map_err(|_| "the owner's label-column frame is malformed".to_string())?;
    let params = serde_json::json!({ "peer_columns": columns }).to_string();
    super::psi::parse_params(&params).map_err(|e| format!("the owner's label columns are not valid: {e}"))?;
    Ok(columns)
}

// ------------------------------------------------------------------------------------------------
// psi-query
// ------------------------------------------------------------------------------------------------

pub struct PsiQuery;

impl Kind for PsiQuery {
    fn kind(&self) -> JobKind {
        JobKind::PsiQuery
    }

    fn plan(&self, state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        no_params(&ask.params)?;
        let setup = match ask.role {
            Role::Requester => {
                let path = fetched_path(&state.dir, &ask.peer, &ask.peer_dataset);
                if !path.exists() {
                    return Err(format!(
                        "no fetched copy of '{}' from '{}': run `consort psi-fetch` first",
                        ask.peer_dataset, ask.peer
                    ));
                }
                None
            }
            Role::Responder => Some(current_setup(state, &ask.dataset)?),
        };
        Ok(Box::new(QueryPlan { setup }))
    }
}

struct QueryPlan {
    /// The owner's current setup (responder only).
    setup: Option<SetupKey>,
}

#[tonic::async_trait]
impl Job for QueryPlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        None
    }

    fn wire_params(&self) -> String {
        String::new()
    }

    fn audited(&self) -> serde_json::Value {
        match &self.setup {
            Some(s) => serde_json::json!({ "setup_id": hex(&s.params.id()) }),
            None => serde_json::json!({}),
        }
    }

    fn loads_dataset(&self) -> bool {
        // The querier loads its query set; the owner never loads its list.
        self.setup.is_none()
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        match self.setup {
            Some(setup) => answer(ctx, setup).await,
            None => ask_query(ctx).await,
        }
    }
}

async fn answer(ctx: RunCtx<'_>, setup: SetupKey) -> Result<Outcome, Failure> {
    let declared = ctx.limits.max_peer_rows;
    let used = setup_queries(&ctx.state.jobs.list(), &ctx.ask.dataset, &ctx.ask.job_id, setup.created);
    if used.saturating_add(declared) > setup.params.query_budget {
        return Err(Failure::shared(anyhow!(
            "the setup's query budget ({} items, {used} used) does not cover this query; the owner must run a new setup (`consort psi-setup --rotate`)",
            setup.params.query_budget
        )));
    }
    ctx.handle.stage("answer", 0, declared);
    let started = Instant::now();
    let m = ubal::answer(&*ctx.channel, &setup.key, &setup.params, declared).await.map_err(Failure::shared)?;
    Ok(Outcome {
        peer_rows: m,
        stages: vec![("answer".into(), started.elapsed().as_secs_f64())],
        summary: serde_json::json!({ "setup_id": hex(&setup.params.id()), "query_items": m }).to_string(),
        ..Outcome::default()
    })
}

/// Query items answered under the setup made at `since` on `dataset` (every peer; this job not
/// counted): the setup's budget bounds them all.
fn setup_queries(jobs: &[consort_api::proto::JobStatus], dataset: &str, this: &str, since: u64) -> u64 {
    jobs.iter()
        .filter(|s| s.job_kind() == JobKind::PsiQuery && s.role == consort_api::proto::Role::Responder as i32)
        .filter(|s| s.dataset == dataset && s.job_id != this && s.created >= since)
        .filter(|s| !matches!(s.job_state(), JobState::Refused | JobState::Unspecified))
        .map(|s| s.peer_rows)
        .sum()
}

/// The query set's keys, shared with the rayon tasks of the query.
struct Keys(Arc<Dataset>);

impl Items for Keys {
    fn len(&self) -> usize {
        self.0.keys.len()
    }
    fn get(&self, index: usize) -> &[u8] {
        self.0.keys.get(index)
    }
}

async fn ask_query(ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
    let dataset = Arc::new(ctx.dataset.expect("psi-query loads the query dataset"));
    let started = Instant::now();
    let path = fetched_path(&ctx.state.dir, &ctx.ask.peer, &ctx.ask.peer_dataset);
    let (set, columns) = cached_set(&path, &ctx.state.storage.key).await.map_err(Failure::private)?;
    let load = started.elapsed().as_secs_f64();
    ctx.handle.stage("query", 0, dataset.len() as u64);
    let started = Instant::now();
    let keys = Arc::new(Keys(dataset.clone()));
    let matches = ubal::query(&*ctx.channel, &set, &keys).await.map_err(Failure::shared)?;
    let query = started.elapsed().as_secs_f64();
    let out = ctx
        .ask
        .out
        .clone()
        .unwrap_or_else(|| super::psi::default_output(&ctx.state.dir, &ctx.ask.job_id, &dataset.spec.name).0);
    super::will_write(ctx.handle, &out).await;
    let header: Vec<String> = columns.iter().map(|c| format!("{}.{c}", ctx.ask.peer)).collect();
    let started = Instant::now();
    let rows = files::write_matches(&dataset, &matches, &header, &out, &ctx.state.storage.at_rest())
        .await
        .map_err(Failure::private)?;
    Ok(Outcome {
        output: Some(Output { shown: out.display().to_string(), path: out, rows }),
        local_rows: dataset.len() as u64,
        peer_rows: set.params.items,
        intersection: Some(matches.len() as u64),
        stages: vec![
            ("load fetched list".into(), load),
            ("query".into(), query),
            ("write".into(), started.elapsed().as_secs_f64()),
        ],
        summary: serde_json::json!({ "setup_id": hex(&set.id()), "matched": matches.len() }).to_string(),
        ..Outcome::default()
    })
}

// ------------------------------------------------------------------------------------------------
// The querier's fetched lists, kept in memory between queries
// ------------------------------------------------------------------------------------------------

type Cached = (Arc<OprfSet>, Arc<Vec<String>>);

/// Fetched sets already read and checked, by path, with the file's modification time and length
/// (a new fetch replaces the file, so the entry no longer matches).
static CACHE: Mutex<Option<CachedSets>> = Mutex::new(None);

/// Per path: the file's modification time and length when read, and what was read.
type CachedSets = HashMap<PathBuf, (SystemTime, u64, Cached)>;

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

async fn cached_set(path: &Path, storage: &Arc<consort_engine::sealed::StorageKey>) -> anyhow::Result<Cached> {
    let stamp =
        file_stamp(path).ok_or_else(|| anyhow!("the fetched list is missing: run `consort psi-fetch` again"))?;
    if let Some((t, l, c)) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_default().get(path)
        && (*t, *l) == stamp
    {
        return Ok(c.clone());
    }
    let (p, s) = (path.to_path_buf(), storage.clone());
    let (set, columns) = cpu::run(move || files::read_set(&p, &s)).await?;
    let cached: Cached = (Arc::new(set), Arc::new(columns));
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_default();
    // One fetched list per (peer, dataset) path; a few lists at most stay resident.
    cache.insert(path.to_path_buf(), (stamp.0, stamp.1, cached.clone()));
    Ok(cached)
}

fn forget_cached(path: &Path) {
    if let Some(c) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        c.remove(path);
    }
}
