//! An embedded, simulated Kubernetes control plane: a real HTTP/1.1 server on loopback that
//! a normal `kube::Client` talks to. Used by `bindlet demo`, the integration tests and the
//! benchmark.
//!
//! # kube-apiserver rules the simulator follows
//!
//! Storage and versions
//! - One global, monotonically increasing `resourceVersion` (like etcd's revision); every
//!   create, update, patch, binding and delete takes the next one. A list's
//!   `metadata.resourceVersion` is the global one.
//! - Server-set metadata on create: `uid` (v4), `resourceVersion`, `creationTimestamp`,
//!   `generation: 1` for pods, CRDs and custom resources; `generateName` gets five characters
//!   from the apiserver's alphabet. Writes cannot change `uid`, `creationTimestamp`,
//!   `generation`, `name` or `namespace`.
//! - `generation` is bumped when anything outside `metadata`/`status` changes (pods, CRDs,
//!   custom resources). A write that changes nothing is not persisted: same resourceVersion,
//!   no watch event (recording 19).
//! - Names are validated: RFC 1123 subdomain for most resources, RFC 1123 label for
//!   namespaces, path-segment rules for custom resources; `generateName` is validated as a
//!   prefix (a trailing `-` is allowed, a trailing `.` is not; recording 28). Label values
//!   are validated.
//! - Namespaced creates in a missing namespace answer `404 namespaces "x" not found`
//!   (NamespaceLifecycle admission). `default`, `kube-system`, `kube-node-lease` exist at start.
//!
//! Admission and defaulting (recordings 31–33, 38, 39, 49)
//! - TaintNodesByCondition: a new Node gets `node.kubernetes.io/not-ready:NoSchedule` appended
//!   to `spec.taints`; nothing removes it but a client (no node-lifecycle controller). Nodes
//!   carry the Go zero-value status fields (`daemonEndpoints`, `nodeInfo`).
//! - ServiceAccount (pod create): `serviceAccountName` defaults to `default` (the deprecated
//!   `serviceAccount` mirrors it); a missing account is `403 pods "x" is forbidden: error
//!   looking up service account ns/sa: serviceaccount "sa" not found`; unless the pod, else
//!   the account, sets `automountServiceAccountToken: false`, every (init) container without a
//!   mount at `/var/run/secrets/kubernetes.io/serviceaccount` mounts a projected
//!   `kube-api-access-<5 random>` volume (token 3607 s, `kube-root-ca.crt`, namespace); a pod
//!   without `imagePullSecrets` gets the account's. Mirror pods are left alone.
//! - DefaultTolerationSeconds (pod create and update): NoExecute tolerations of 300 s for
//!   not-ready and unreachable unless a toleration with that key (or none) and effect
//!   NoExecute (or none) is there.
//! - Pod defaulting: a container's limits fill its missing requests (any resource); the QoS
//!   class counts cpu and memory only.
//! - ResourceSlices and DeviceClasses start at `generation: 1`; device taints get `timeAdded`;
//!   a ResourceClaim's `status` is `{}` when empty. DRA fields are otherwise stored as sent.
//!
//! Deletion (recordings 45–48; see `store::delete`)
//! - Pods bound to a node are deleted gracefully: `deletionTimestamp` = now + grace period
//!   (request, else `terminationGracePeriodSeconds`), `deletionGracePeriodSeconds`,
//!   `generation` + 1, and the pod stays until a delete with grace period 0 (the kubelet's;
//!   see [`kubelet`]). Unbound or finished pods go at once, after the same MODIFIED event.
//! - An object with finalizers is only marked (`deletionTimestamp`, grace 0) and answered
//!   200 with the object; an update that removes the last finalizer deletes it and answers
//!   the object at its old resourceVersion; no finalizer may be added meanwhile (422).
//! - `propagationPolicy` `Orphan`/`Foreground` (or `orphanDependents`) put the
//!   `orphan`/`foregroundDeletion` finalizer on the object for the garbage collector.
//!
//! Controllers (every `SimOptions::controller_period`; see `store::gc`)
//! - serviceaccount controller: every namespace has a `default` ServiceAccount.
//! - garbage collector: dependents whose owners are all gone (not found, or another uid) are
//!   deleted; references to gone owners are dropped when another owner exists; orphan and
//!   foreground deletions are completed (recordings 34, 35).
//!
//! Writes
//! - PUT with a stale `metadata.resourceVersion` → `409 Conflict` "the object has been
//!   modified; please apply your changes to the latest version and try again" (recordings
//!   11, 27). PUT without one is an unconditional update for built-in types and `422
//!   metadata.resourceVersion: Invalid value: 0x0: must be specified for an update` for
//!   custom resources and CRDs. PUT of a missing object creates it for Leases and Events and
//!   is 404 otherwise. A PATCH whose result carries a different `metadata.resourceVersion`
//!   is the same 409; a differing `metadata.uid` is a precondition 409.
//! - Patch types: JSON patch (RFC 6902), merge patch (RFC 7386), strategic merge patch
//!   (built-in types only; custom resources answer 415 like the real server), server-side
//!   apply (`fieldManager` required, else 422 as recording 21; apply to a missing object
//!   creates it).
//! - Status subresources: writes to `/status` take only `.status` from the request
//!   (recordings 12, 19); writes to the main resource keep the stored `.status`; creates drop
//!   `.status` (pods get `phase: Pending` and a `qosClass`; nodes keep theirs).
//! - Pods: create validates `spec.containers` (non-empty, unique names, each with an image)
//!   and fills the visible defaults (restartPolicy, dnsPolicy, terminationGracePeriodSeconds,
//!   schedulerName, imagePullPolicy, ...). Updates may only change images, tolerations,
//!   activeDeadlineSeconds, terminationGracePeriodSeconds and scheduling gates (else 422).
//! - `POST pods/{name}/binding` (design §2, recordings 04–10): `201` with a Success `Status`;
//!   sets `spec.nodeName`, the `PodScheduled=True` condition and copies the Binding's
//!   annotations; already assigned → 409 `pod X is already assigned to node "Y"` on
//!   `pods/binding`; wrong `metadata.uid` → 409 storage precondition on `pods`; missing pod →
//!   404; name differing from the URL → 400; the target node's existence is not checked.
//! - DELETE honours `preconditions.uid` / `preconditions.resourceVersion` (409). Pods,
//!   namespaces, CRDs and custom resources answer the deleted object; other types a Success
//!   `Status` with `details`.
//! - CRDs: creating one registers each served version at once (scope, status subresource,
//!   `selectableFields`, `openAPIV3Schema`) and sets `status` to Established/NamesAccepted;
//!   updating re-registers; deleting removes the resource and its objects.
//! - Custom resources are validated against `openAPIV3Schema`: `type`, `format: int32`,
//!   `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
//!   `x-kubernetes-embedded-resource`, `additionalProperties`, `required`, `enum`,
//!   `nullable`, `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`.
//!   Violations → 422 `Invalid` with causes (recording 14); unknown fields are pruned and each
//!   reported in a `Warning: 299 - "unknown field \"spec.x\""` header (recording 15); nulls in
//!   non-nullable fields are dropped.
//!
//! Reads
//! - Field selectors: each resource has its table of field labels (pods: `spec.nodeName`,
//!   `metadata.name`, `metadata.namespace`, `status.phase`, ...; nodes: `metadata.name`,
//!   `spec.unschedulable`; events: the `involvedObject.*` family; custom resources:
//!   `metadata.name`, `metadata.namespace` and the CRD's `selectableFields`). Any other label
//!   → 400 `field label not supported: X` (recording 17). `=`, `==`, `!=` and `\` escapes.
//! - Label selectors: `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`, `>`, `<`; bad syntax → 400.
//! - Lists: `limit` + `continue` (the token carries the first page's resourceVersion, which
//!   every page reports), `remainingItemCount` when unfiltered; `resourceVersion` newer than
//!   the server's → 504 `Too large resource version`; `resourceVersionMatch=Exact` on an older
//!   one → 410; `resourceVersionMatch` without `resourceVersion` → 422. Built-in list items
//!   carry no `kind`/`apiVersion` (recording 30); custom resource items do (recording 16).
//! - Watches (`watch=1|true`), newline-delimited JSON over chunked HTTP/1.1:
//!   from a `resourceVersion`: the retained events after it; older than the retained history
//!   → `200` with one `ERROR` event carrying `410 Expired` `too old resource version: X (Y)`
//!   (recording 23). `resourceVersion` unset or `0`: synthetic ADDED for the current state,
//!   then live events. `sendInitialEvents=true` (needs `resourceVersionMatch=NotOlderThan`
//!   and `allowWatchBookmarks=true`, else 422): ADDED per object, then a BOOKMARK annotated
//!   `k8s.io/initial-events-end: "true"` (recording 24). `allowWatchBookmarks=true`: a
//!   BOOKMARK (`apiVersion`, `kind`, `metadata.resourceVersion` only) every
//!   `SimOptions::bookmark_interval` and 2 s before a `timeoutSeconds` end when the timeout
//!   is longer than 2 s (recordings 22, 24);
//!   `timeoutSeconds` ends the stream cleanly. Selectors apply per watcher with the watch
//!   cache's transitions: an object that starts matching arrives as ADDED, one that stops
//!   matching as DELETED (its last matching state at the new resourceVersion).
//! - Errors are `Status` objects shaped like the real ones (`kind`, `apiVersion`,
//!   `metadata: {}`, `status: Failure`, `message`, `reason`, `details {name, group, kind,
//!   causes}`, `code`). Unknown resources in a served group/version → 404 Status "the server
//!   could not find the requested resource"; unknown groups/versions → plain-text
//!   `404 page not found`; verbs a resource does not serve → 405 MethodNotAllowed.
//! - Discovery: `/api`, `/api/v1`, `/apis`, `/apis/{group}`, `/apis/{group}/{version}`
//!   (recording 00), `/version`, `/healthz`, `/livez`, `/readyz`. Everything is JSON;
//!   protobuf `Accept` preferences are ignored.
//!
//! # Known differences from a real kube-apiserver
//!
//! - No authentication, authorization, admission webhooks or ValidatingAdmissionPolicies
//!   (so node-restricted binding policies of design §2 are not enforced). TokenReview and
//!   SubjectAccessReview are served from a table the test fills (`Simulator::auth`), for
//!   clients that delegate their own access checks; requests to the simulator itself are
//!   never checked. SelfSubjectAccessReview allows every resource permission except those
//!   the test denied to the caller's bearer token (`AuthHandle::deny`, a per-token deny
//!   list); of those, only `resourceclaims/binding` is also enforced on writes. Discovery
//!   lists all verbs for the reviews although only `create` is served.
//! - `managedFields` are not kept: server-side apply is a merge patch with no field
//!   ownership, no conflicts (`force` is ignored) and no removal of fields a manager stopped
//!   applying.
//! - Strategic merge patch merges lists by key only for well-known list names (`conditions`
//!   by `type`, `containers`/`volumes`/`env`/... by `name`, `ownerReferences` by `uid`, ...,
//!   wherever they appear), `finalizers` as a set; other lists are replaced. Only
//!   `$patch: replace|delete` directives are understood.
//! - Deleting a namespace or a CRD removes its objects at once (finalizers and grace periods
//!   ignored) instead of going through `Terminating`. `deletecollection` is not served (405).
//!   `dryRun` → 400.
//! - Of kube-controller-manager only the garbage collector and the serviceaccount controller
//!   run: no node-lifecycle, TTL (`node.alpha.kubernetes.io/ttl`), root-CA publisher
//!   (`kube-root-ca.crt`), resourceclaim or PV controllers. The garbage collector does not
//!   honour `blockOwnerDeletion` for anything but foreground deletion, and works from the
//!   store directly (its requests are not counted and faults do not touch them).
//! - Core `v1` Events and `events.k8s.io/v1` Events are stored separately (the real server
//!   converts between them over one storage).
//! - Lists after the first page reflect the current state (not a snapshot at the first
//!   page's resourceVersion); since every page reports that first resourceVersion, a watch
//!   started from it replays the changes, so list-then-watch stays consistent.
//! - A watch from a `resourceVersion` newer than the server's waits for it instead of
//!   answering `Too large resource version`. Watches without `timeoutSeconds` never time out
//!   (the real server picks 30–60 minutes).
//! - Each watch buffers up to 1024 events; a watcher that falls behind further is ended
//!   (clean end of stream) and must resume from its last resourceVersion, like the watch
//!   cache terminating a blocked watcher.
//! - Schema validation ignores `pattern`, `allOf`/`anyOf`/`oneOf`/`not`, CEL rules
//!   (`x-kubernetes-validations`), defaults, list-type/map-type uniqueness and formats other
//!   than `int32`; CRD conversion is `None` (objects are served with the requested
//!   apiVersion). CRDs are Established immediately.
//! - PersistentVolumeClaims, PersistentVolumes and StorageClasses are stored without
//!   validation or defaults: no PV controller runs (no `status.phase` is written; see
//!   [`provisioner`] for a simulated provisioner), and a claim's `volumeName` may change
//!   after it was set.
//! - ResourceClaims, ResourceClaimTemplates, ResourceSlices, DeviceClasses and
//!   ServiceAccounts are stored without spec validation and with only the defaults listed
//!   above, and no resourceclaim controller generates claims
//!   from templates. Claim status writes check only: `allocation` cannot change once set
//!   (it may be cleared), `reservedFor` holds at most 256 entries, and a caller declared with
//!   `AuthHandle::deny_claim_binding` (by bearer token) gets 422 when it changes
//!   `allocation` or `reservedFor` (Kubernetes 1.36's `resourceclaims/binding` rule). As the
//!   real server does, a status write drops the `status.devices` entries of devices it
//!   deallocates. Device fields of 1.36 (taints, binding conditions, `bindsToNode`,
//!   capacity, counters) and allocation fields (tolerations, binding conditions,
//!   `consumedCapacity`, `shareID`, `allocationTimestamp`) are kept as sent (recordings
//!   38–41); `resourceclaims/driver` is not checked and DeviceTaintRules are not served.
//! - Only a few pod defaults are filled (no priority classes, enableServiceLinks variations,
//!   pod-level resources); pod `status` updates are not validated (e.g. that an
//!   `extendedResourceClaimStatus` names existing containers and requests). No kubelet runs:
//!   pods stay `Pending` unless a client plays one (see [`kubelet`] for a simulated one), and
//!   a deleted pod bound to a node stays until someone deletes it with grace period 0.
//! - Aggregated discovery (`application/json;g=apidiscovery.k8s.io;v=v2`) is not served; the
//!   legacy documents are returned instead.
//! - Request counts include every request for a resource (faulted ones too); non-resource
//!   requests count as `("get", "discovery")`. Fault rules apply to resource requests only.

// Cluster input, files and NVML must never panic the agent: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod auth;
mod http;
pub mod kubelet;
mod objects;
pub mod podresources_server;
pub mod provisioner;
mod registry;
mod schema;
mod selector;
mod status;
mod store;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::AuthHandle;
use store::State;

/// Errors starting the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build a client for the simulator: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot build the simulator's URL: {0}")]
    Url(String),
    #[error("cannot serialize CRD {name}: {source}")]
    CrdEncode {
        name: String,
        source: serde_json::Error,
    },
    #[error("CRD {name} rejected: {message}")]
    CrdRejected { name: String, message: String },
}

/// How the simulator starts.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// CRDs installed at start.
    pub crds: Vec<CustomResourceDefinition>,
    /// Watch events retained for resumption; a watch from an older resourceVersion gets 410 Gone.
    pub watch_history: usize,
    /// How often open watches that asked `allowWatchBookmarks` get a BOOKMARK (default 1 s;
    /// the real server sends them about once a minute, a short period keeps tests quick).
    pub bookmark_interval: Duration,
    /// Fixed address to listen on; None = 127.0.0.1:0 (ephemeral port).
    pub listen: Option<SocketAddr>,
    /// How often the simulated kube-controller-manager runs (garbage collector,
    /// serviceaccount controller); None = not at all. Default 250 ms: the real garbage
    /// collector removed an orphaned object within 0.1–1 s (recording 35).
    pub controller_period: Option<Duration>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            crds: Vec::new(),
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(1),
            listen: None,
            controller_period: Some(Duration::from_millis(250)),
        }
    }
}

impl SimOptions {
    /// Adds a CRD to install at start.
    pub fn with_crd(mut self, crd: CustomResourceDefinition) -> Self {
        self.crds.push(crd);
        self
    }
}

/// One fault: requests matching `verb` and `resource` fail with `status`.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// "get","list","watch","create","update","patch","delete"; None = any.
    pub verb: Option<String>,
    /// "pods", "pods/binding", "bindrequests/status", ...; None = any.
    pub resource: Option<String>,
    /// e.g. 500, 503, 429, 409.
    pub status: u16,
    /// 0..=1.
    pub probability: f64,
    /// How many times at most; None = unlimited.
    pub times: Option<u64>,
}

impl FaultRule {
    /// A rule that always fails `verb` on `resource` with `status`.
    pub fn always(verb: &str, resource: &str, status: u16) -> Self {
        FaultRule {
            verb: Some(verb.to_string()),
            resource: Some(resource.to_string()),
            status,
            probability: 1.0,
            times: None,
        }
    }
}

#[derive(Debug, Default)]
struct FaultConfig {
    latency: Duration,
    rules: Vec<(FaultRule, u64)>,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    cfg: Mutex<FaultConfig>,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultConfig> {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn latency(&self) -> Duration {
        self.lock().latency
    }
    /// The status of the first matching rule with budget left that fires.
    pub(crate) fn check(&self, verb: &str, resource: &str) -> Option<u16> {
        let mut cfg = self.lock();
        for (rule, used) in cfg.rules.iter_mut() {
            if rule.verb.as_deref().is_some_and(|v| v != verb)
                || rule.resource.as_deref().is_some_and(|r| r != resource)
                || rule.times.is_some_and(|t| *used >= t)
            {
                continue;
            }
            if rand::random::<f64>() < rule.probability {
                *used += 1;
                return Some(rule.status);
            }
        }
        None
    }
}

/// Requests served so far: (verb, resource[/subresource]) → count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts(pub BTreeMap<(String, String), u64>);

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
    /// Requests of one verb on one resource (e.g. `("create", "pods/binding")`).
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.0
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }
    /// Requests of one verb on any resource.
    pub fn verb(&self, verb: &str) -> u64 {
        self.0
            .iter()
            .filter(|((v, _), _)| v == verb)
            .map(|(_, n)| n)
            .sum()
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) faults: Faults,
    pub(crate) auth: auth::AuthTable,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    pub(crate) root: CancellationToken,
    conn_epoch: Mutex<CancellationToken>,
    watch_epoch: Mutex<CancellationToken>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) current_rv: Arc<AtomicU64>,
    pub(crate) addr: SocketAddr,
}

impl Shared {
    /// The store lock; held only for in-memory work, never across an await.
    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn conn_token(&self) -> CancellationToken {
        self.conn_epoch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub(crate) fn watch_token(&self) -> CancellationToken {
        self.watch_epoch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn renew(&self, slot: &Mutex<CancellationToken>) {
        let mut t = slot.lock().unwrap_or_else(|e| e.into_inner());
        t.cancel();
        *t = self.root.child_token();
    }
    pub(crate) fn count(&self, verb: &str, resource: &str) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry((verb.to_string(), resource.to_string()))
            .or_insert(0) += 1;
    }
    fn drop_watches(&self) {
        self.lock_state().drop_watchers();
        self.renew(&self.watch_epoch);
    }
}

/// The simulated kube-controller-manager: one pass every `period` until the simulator stops.
async fn run_controllers(shared: std::sync::Weak<Shared>, period: Duration) {
    let Some(root) = shared.upgrade().map(|s| s.root.clone()) else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = root.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(sh) = shared.upgrade() else { return };
        sh.lock_state().run_controllers();
    }
}

/// Handle to inject faults; cheap to clone.
#[derive(Clone)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

impl FaultHandle {
    /// Added to every request.
    pub fn set_latency(&self, d: Duration) {
        self.shared.faults.lock().latency = d;
    }
    /// First matching rule with budget wins.
    pub fn add_rule(&self, rule: FaultRule) {
        self.shared.faults.lock().rules.push((rule, 0));
    }
    /// Removes rules and latency.
    pub fn clear(&self) {
        let mut cfg = self.shared.faults.lock();
        cfg.rules.clear();
        cfg.latency = Duration::ZERO;
    }
    /// Ends all open watch streams now (clean end of stream, like a watch timeout / LB cut).
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }
    /// Forgets watch history: resuming from any older resourceVersion gets 410 Expired.
    pub fn compact(&self) {
        self.shared.lock_state().compact();
    }
}

/// The running simulator.
pub struct Simulator {
    shared: Arc<Shared>,
    client: kube::Client,
    accept: JoinHandle<()>,
}

impl Simulator {
    /// Starts listening and installs the default namespaces and `opts.crds`.
    pub async fn start(opts: SimOptions) -> Result<Simulator, SimError> {
        let want = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(want)
            .await
            .map_err(|source| SimError::Listen { addr: want, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SimError::Listen { addr: want, source })?;
        let current_rv = Arc::new(AtomicU64::new(0));
        let root = CancellationToken::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(opts.watch_history, current_rv.clone())),
            faults: Faults::default(),
            auth: auth::AuthTable::default(),
            counts: Mutex::new(BTreeMap::new()),
            conn_epoch: Mutex::new(root.child_token()),
            watch_epoch: Mutex::new(root.child_token()),
            root,
            bookmark_interval: opts.bookmark_interval,
            current_rv,
            addr,
        });
        {
            let mut st = shared.lock_state();
            let ns_def = st
                .registry
                .get("", "v1", "namespaces")
                .ok_or_else(|| SimError::Url("namespaces are not registered".into()))?;
            let crd_def = st
                .registry
                .get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
                .ok_or_else(|| SimError::Url("CRDs are not registered".into()))?;
            for ns in ["default", "kube-system", "kube-node-lease"] {
                st.create(&ns_def, "", json!({"metadata": {"name": ns}}))
                    .map_err(|e| SimError::CrdRejected {
                        name: ns.to_string(),
                        message: e.message,
                    })?;
            }
            for crd in &opts.crds {
                let name = crd.metadata.name.clone().unwrap_or_default();
                let v = serde_json::to_value(crd).map_err(|source| SimError::CrdEncode {
                    name: name.clone(),
                    source,
                })?;
                st.create(&crd_def, "", v)
                    .map_err(|e| SimError::CrdRejected {
                        name,
                        message: e.message,
                    })?;
            }
        }
        let uri: ::http::Uri = format!("http://{addr}")
            .parse()
            .map_err(|e: ::http::uri::InvalidUri| SimError::Url(e.to_string()))?;
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".to_string();
        let client = kube::Client::try_from(config)?;
        let accept = tokio::spawn(http::serve(shared.clone(), listener));
        if let Some(period) = opts.controller_period {
            tokio::spawn(run_controllers(Arc::downgrade(&shared), period));
        }
        Ok(Simulator {
            shared,
            client,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// A `kube::Client` for this server (default namespace "default").
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig pointing at `url()`, for `kube::Config::from_custom_kubeconfig`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bindlet-sim\n  cluster:\n    server: {url}\ncontexts:\n- name: bindlet-sim\n  context:\n    cluster: bindlet-sim\n    user: bindlet-sim\n    namespace: default\ncurrent-context: bindlet-sim\nusers:\n- name: bindlet-sim\n  user: {{}}\n",
            url = self.url()
        )
    }

    /// Fault injection handle.
    pub fn faults(&self) -> FaultHandle {
        FaultHandle {
            shared: self.shared.clone(),
        }
    }

    /// Tokens and grants for the simulated TokenReview and SubjectAccessReview.
    pub fn auth(&self) -> AuthHandle {
        AuthHandle {
            shared: self.shared.clone(),
        }
    }

    /// Requests served so far per (verb, resource[/subresource]).
    pub fn request_count(&self) -> RequestCounts {
        RequestCounts(
            self.shared
                .counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Watches open now, all resources together.
    pub fn open_watches(&self) -> usize {
        self.shared.lock_state().open_watches()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock_state().rv
    }

    /// Simulates an API server restart: every open connection and watch is cut, stored
    /// objects survive, watch history is lost (old resourceVersions get 410 afterwards).
    pub async fn restart(&self) {
        {
            let mut st = self.shared.lock_state();
            st.compact();
            st.drop_watchers();
        }
        self.shared.renew(&self.shared.watch_epoch);
        self.shared.renew(&self.shared.conn_epoch);
        // Let the cut connections' tasks observe the cancellation.
        tokio::task::yield_now().await;
    }

    /// Stops listening and cuts every connection.
    pub async fn shutdown(self) {
        self.shared.root.cancel();
        self.shared.lock_state().drop_watchers();
        let _ = self.accept.await;
    }
}
