//! Test environment: the embedded simulated control plane by default, or a real cluster
//! when `BINDLET_TEST_KUBECONFIG` names a kubeconfig. Each test gets its own namespace
//! and its own uniquely named Node objects, and cleans them up, also when it fails.
//!
//! The environment sets up what a real cluster's installer and kubelets would: the service
//! accounts pods name, Nodes that are Ready without the `not-ready` taint admission puts on
//! every new Node. Tests that cannot run on a real cluster print why and return early
//! (`hack/test-cluster.sh` counts those lines as skipped).
#![allow(dead_code)]

use std::time::Duration;

use bindlet::agent::{self, AgentConfig, AgentHandle};
use bindlet::api::{BindRequest, NodeVerification, Phase, Verdict};
use bindlet::binding::Backoff;
use bindlet::sim::{SimOptions, Simulator};
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount, Taint};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// Which BindRequest CRD a simulator-backed test installs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Crd {
    Bindlet,
    Kai,
}

pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    pub sim: Option<Simulator>,
    prefix: String,
    nodes: std::sync::Mutex<Vec<String>>,
    /// Whether the installed BindRequest CRD keeps `status.nodeVerification` (bindlet's
    /// does; KAI's prunes it).
    keeps_verification: bool,
    /// Set by [`TestEnv::cleanup`]; a real-cluster env dropped without it (a failed test)
    /// cleans up from `Drop`.
    cleaned: bool,
    kubeconfig: Option<std::ffi::OsString>,
}

/// The service account KAI's reservation pods run as; KAI's installer creates it.
pub const RESERVATION_SERVICE_ACCOUNT: &str = "kai-resource-reservation";

/// The taint admission (TaintNodesByCondition) puts on every new Node until the node
/// lifecycle controller sees a Ready kubelet.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

pub fn kai_crd() -> CustomResourceDefinition {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/kai/scheduling.run.ai_bindrequests.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "KAI's CRD is needed beside the checkout ({}): {e}",
            path.display()
        )
    });
    serde_yaml::from_str(&text).expect("KAI CRD parses")
}

fn unique(tag: &str) -> String {
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    format!(
        "bt-{}-{:06x}",
        tag.trim_matches('-'),
        rand::random::<u32>() & 0xff_ffff
    )
}

impl TestEnv {
    pub async fn new(test: &str) -> TestEnv {
        TestEnv::with_crd(test, Crd::Bindlet).await
    }

    /// On the simulator, one whose garbage collector does not run: for tests of what the
    /// agent does with a request whose owner pod is gone, which a cluster's collector deletes
    /// within a second. Such tests skip on a real cluster ([`TestEnv::sim_or_skip_because`]).
    pub async fn without_garbage_collector(test: &str) -> TestEnv {
        TestEnv::start(test, Crd::Bindlet, false).await
    }

    pub async fn with_crd(test: &str, crd: Crd) -> TestEnv {
        TestEnv::start(test, crd, true).await
    }

    async fn start(test: &str, crd: Crd, collector: bool) -> TestEnv {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("BINDLET_TEST_LOG").unwrap_or_else(|_| "off".into()))
            .with_test_writer()
            .try_init();
        let prefix = unique(test);
        let kubeconfig = std::env::var_os("BINDLET_TEST_KUBECONFIG");
        let (client, sim, keeps_verification) = match &kubeconfig {
            Some(path) => {
                let client = real_cluster_client(path).await;
                let installed = ensure_crd(&client).await;
                (client, None, crd_keeps_verification(&installed))
            }
            None => {
                let crd = match crd {
                    Crd::Bindlet => bindlet::api::crd(),
                    Crd::Kai => kai_crd(),
                };
                let keeps = crd_keeps_verification(&crd);
                let defaults = SimOptions::default();
                let sim = Simulator::start(SimOptions {
                    crds: vec![crd],
                    controller_period: defaults.controller_period.filter(|_| collector),
                    ..defaults
                })
                .await
                .expect("start simulator");
                (sim.client(), Some(sim), keeps)
            }
        };
        let namespace = prefix.clone();
        let ns: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": namespace } })).expect("ns");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        let env = TestEnv {
            client,
            namespace,
            sim,
            prefix,
            nodes: Default::default(),
            keeps_verification,
            cleaned: false,
            kubeconfig,
        };
        // The service accounts the tests' pods run as. A cluster's serviceaccount controller
        // makes `default` soon after the namespace; creating it here does not wait for it
        // (AlreadyExists is fine). KAI's installer makes the reservation one.
        env.ensure_service_account("default").await;
        env.ensure_service_account(RESERVATION_SERVICE_ACCOUNT)
            .await;
        env
    }

    /// Creates a ServiceAccount in the test namespace unless it exists.
    pub async fn ensure_service_account(&self, name: &str) {
        let sa: ServiceAccount =
            serde_json::from_value(json!({ "metadata": { "name": name } })).expect("sa");
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace);
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create service account {name}: {e}"),
        }
    }

    /// What the agent verified for `br`'s latest attempt. With bindlet's CRD the status
    /// carries it; KAI's CRD prunes `status.nodeVerification` (checked here), and the
    /// agent's own record (`/debug/state`) has the same verdicts.
    pub fn verification(&self, agent: &AgentHandle, br: &BindRequest) -> NodeVerification {
        let in_status = br.status.as_ref().and_then(|s| s.node_verification.clone());
        if self.keeps_verification {
            return in_status.expect("nodeVerification in the BindRequest status");
        }
        assert!(
            in_status.is_none(),
            "the installed CRD prunes status.nodeVerification, yet it is there"
        );
        eprintln!(
            "note: the installed BindRequest CRD prunes status.nodeVerification; checking the \
             verdicts the agent recorded in /debug/state"
        );
        let name = br.metadata.name.clone().unwrap_or_default();
        let state = agent.stats.diag.debug_state(&agent.stats);
        let record = state
            .requests
            .iter()
            .find(|r| r.namespace == self.namespace && r.name == name)
            .unwrap_or_else(|| panic!("the agent has no record of {name}"));
        let attempt = record
            .attempts
            .iter()
            .rev()
            .find(|a| a.result != "running")
            .unwrap_or_else(|| panic!("the agent recorded no finished attempt of {name}"));
        NodeVerification {
            node: state.node.clone().unwrap_or_default(),
            agent: None,
            attempt: i32::try_from(record.attempts_total).unwrap_or(i32::MAX),
            observed_at: Some(attempt.started_at.clone()),
            verdicts: attempt
                .verdicts
                .iter()
                .map(|v| Verdict {
                    plugin: v.plugin.clone(),
                    check: v.check.clone(),
                    outcome: v.outcome,
                    message: v.message.clone(),
                })
                .collect(),
        }
    }

    /// Whether the installed BindRequest CRD keeps `status.nodeVerification`.
    pub fn keeps_verification(&self) -> bool {
        self.keeps_verification
    }

    pub fn is_sim(&self) -> bool {
        self.sim.is_some()
    }

    /// Fault injection needs the simulator; on a real cluster such tests are skipped.
    pub fn sim_or_skip(&self, test: &str) -> Option<&Simulator> {
        self.sim_or_skip_because(test, "needs the simulator's fault injection")
    }

    /// The simulator, or `None` on a real cluster after printing why the test is skipped
    /// there (`hack/test-cluster.sh` counts these lines).
    pub fn sim_or_skip_because(&self, test: &str, why: &str) -> Option<&Simulator> {
        if self.sim.is_none() {
            eprintln!("{test}: skipped on a real cluster ({why})");
        }
        self.sim.as_ref()
    }

    pub fn node_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Creates a Node (cleaned up at the end).
    pub async fn create_node(&self, name: &str, spec: Value) -> Node {
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "bindlet-test": self.prefix } },
            "spec": spec,
            "status": { "allocatable": { "cpu": "64", "memory": "256Gi", "nvidia.com/gpu": "8", "pods": "110" } }
        }))
        .expect("node");
        self.nodes.lock().expect("lock").push(name.to_string());
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        // What a kubelet and the node lifecycle controller do for a healthy node; taints
        // the test asked for stay.
        let own: Vec<Taint> = spec
            .get("taints")
            .map(|t| serde_json::from_value(t.clone()).expect("taints"))
            .unwrap_or_default();
        bindlet::sim::kubelet::report_node_ready(&self.client, name, &own)
            .await
            .expect("report the node Ready")
    }

    /// Creates a Node as a client does, with no kubelet behind it: it keeps the not-ready
    /// taint admission adds (cleaned up at the end).
    pub async fn create_unready_node(&self, name: &str) -> Node {
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "bindlet-test": self.prefix } }
        }))
        .expect("node");
        self.nodes.lock().expect("lock").push(name.to_string());
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("create node")
    }

    pub async fn patch_node(&self, name: &str, patch: Value) {
        Api::<Node>::all(self.client.clone())
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch node");
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn bind_requests(&self) -> Api<BindRequest> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates a pod; `extra_spec` is merged into a minimal valid spec.
    pub async fn create_pod(&self, name: &str, extra_spec: Value) -> Pod {
        let mut spec = json!({
            "schedulerName": "kai-scheduler",
            // Fake nodes have no kubelet: tolerate what the node lifecycle controller adds.
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists" },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists" }
            ],
            "containers": [ { "name": "main", "image": "registry.k8s.io/pause:3.10" } ]
        });
        merge(&mut spec, extra_spec);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": self.namespace },
            "spec": spec
        }))
        .expect("pod");
        let pods = self.pods();
        let pp = PostParams::default();
        retry_transport(|| pods.create(&pp, &pod))
            .await
            .expect("create pod")
    }

    /// A pod whose one container asks for `gpus` whole GPUs (none when 0), and its request
    /// for `count` whole GPUs (`portion` 1.00) on `node`.
    pub async fn whole_gpu_pod(&self, name: &str, node: &str, gpus: u32, count: u32) -> Pod {
        let mut c = json!({ "name": "main", "image": "registry.k8s.io/pause:3.10" });
        if gpus > 0 {
            c["resources"] = json!({ "limits": { "nvidia.com/gpu": gpus.to_string() } });
        }
        let pod = self.create_pod(name, json!({ "containers": [c] })).await;
        self.create_request(
            name,
            node,
            pod.metadata.uid.as_deref(),
            json!({ "receivedResourceType": "Regular", "receivedGPU": { "count": count, "portion": "1.00" } }),
        )
        .await;
        pod
    }

    /// Creates a KAI-style BindRequest: labelled for `label_node`, owned by the pod with `owner_uid`.
    pub async fn create_request(
        &self,
        name: &str,
        label_node: &str,
        owner_uid: Option<&str>,
        extra_spec: Value,
    ) -> BindRequest {
        let mut spec = json!({
            "podName": name,
            "selectedNode": label_node,
            "receivedResourceType": "Regular",
            "receivedGPU": { "count": 0, "portion": "0" }
        });
        merge(&mut spec, extra_spec);
        let mut meta = json!({
            "name": name,
            "namespace": self.namespace,
            "labels": { "selected-node": label_node }
        });
        if let Some(uid) = owner_uid {
            meta["ownerReferences"] = json!([{ "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "controller": true }]);
        }
        let br: BindRequest = serde_json::from_value(json!({
            "apiVersion": "scheduling.run.ai/v1alpha2",
            "kind": "BindRequest",
            "metadata": meta,
            "spec": spec
        }))
        .expect("bind request");
        let api = self.bind_requests();
        let pp = PostParams::default();
        retry_transport(|| api.create(&pp, &br))
            .await
            .expect("create bind request")
    }

    /// Pod plus its BindRequest for `node`, the usual scheduler output.
    pub async fn pod_and_request(&self, name: &str, node: &str) -> Pod {
        let pod = self.create_pod(name, json!({})).await;
        self.create_request(name, node, pod.metadata.uid.as_deref(), json!({}))
            .await;
        pod
    }

    /// Agent settings for tests: fast retries and a short Lease.
    pub fn agent_config(&self, node: &str) -> AgentConfig {
        let mut cfg = AgentConfig::for_node(node);
        cfg.lease_namespace = self.namespace.clone();
        cfg.workers = 4;
        cfg.backoff = Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
        };
        cfg.api_timeout = Duration::from_secs(5);
        cfg.lease_duration = Duration::from_secs(2);
        cfg.lease_renew = Duration::from_millis(500);
        cfg.lease_retry = Duration::from_millis(200);
        // GPU reservation pods go to the test's own namespace (the app label tells them
        // from the test's pods), so they are cleaned up with it.
        cfg.plugins.sharing.args.reservation_namespace = self.namespace.clone();
        cfg
    }

    /// Starts an agent and waits until it leads and its watch has synced.
    pub async fn start_agent(&self, cfg: AgentConfig) -> AgentHandle {
        let handle = agent::spawn(self.client.clone(), cfg);
        wait_until(
            Duration::from_secs(20),
            "agent leads and is synced",
            || async { handle.stats.is_leading() && handle.stats.is_synced() },
        )
        .await;
        handle
    }

    /// The request as the server has it now; `None` when absent or unreadable (fault tests
    /// make the server fail on purpose).
    pub async fn get_request(&self, name: &str) -> Option<BindRequest> {
        self.bind_requests().get_opt(name).await.ok().flatten()
    }

    /// Waits until the request has the phase `want` and, for Failed, gave up.
    pub async fn wait_phase(&self, name: &str, want: Phase) -> BindRequest {
        let start = tokio::time::Instant::now();
        let mut last = None;
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(br) = self.get_request(name).await {
                let done = br.phase() == Some(want)
                    && (want != Phase::Failed || bindlet::binding::is_settled(&br, 3));
                if done {
                    return br;
                }
                last = Some(br);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "BindRequest {name} did not reach {want:?}; last status: {:?}",
            last.map(|b| b.status)
        );
    }

    pub async fn pod_node(&self, name: &str) -> Option<String> {
        self.pods()
            .get_opt(name)
            .await
            .expect("get pod")
            .and_then(|p| p.spec.and_then(|s| s.node_name))
    }

    /// The Events about `kind/name`, oldest first. Both Event APIs are read: bindlet writes
    /// most through events.k8s.io/v1 and KAI's `Bound` / `BindingError` through core/v1. A
    /// real server serves one set of Events through both (each appears in both lists, with
    /// one uid); the simulator keeps them apart. Core Events are given in events.k8s.io form.
    pub async fn events_for(&self, kind: &str, name: &str) -> Vec<Event> {
        let list = Api::<Event>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .expect("list events");
        let mut items = list.items;
        let seen: std::collections::HashSet<String> = items
            .iter()
            .filter_map(|e| e.metadata.uid.clone())
            .collect();
        let core = self.core_events().await;
        items.extend(
            core.into_iter()
                .filter(|e| e.metadata.uid.as_ref().is_none_or(|u| !seen.contains(u)))
                .map(core_as_events_v1),
        );
        let mut v: Vec<Event> = items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                })
            })
            .collect();
        v.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        v
    }

    /// The namespace's Events as the core/v1 API gives them (with `source`).
    pub async fn core_events(&self) -> Vec<CoreEvent> {
        Api::<CoreEvent>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
            .expect("list core events")
            .items
    }

    /// Waits (up to 10 s) until `kind/name` has at least `n` events with `reason`;
    /// returns all its events.
    pub async fn wait_events(&self, kind: &str, name: &str, reason: &str, n: usize) -> Vec<Event> {
        let start = tokio::time::Instant::now();
        loop {
            let got = self.events_for(kind, name).await;
            let count = got
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .count();
            if count >= n || start.elapsed() > Duration::from_secs(10) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn cleanup(mut self) {
        self.cleaned = true;
        let names = self.nodes.lock().map(|n| n.clone()).unwrap_or_default();
        remove_test_objects(&self.client, &self.namespace, &names).await;
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
    }
}

impl Drop for TestEnv {
    /// A failed test unwinds past `cleanup`: on a real cluster its namespace, pods and
    /// Nodes would pile up, so they are removed here, from a thread with its own runtime
    /// and client (the test's runtime is in the middle of dropping the test).
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let Some(path) = self.kubeconfig.clone() else {
            return; // The simulator goes away with the test.
        };
        let namespace = self.namespace.clone();
        let nodes = self.nodes.lock().map(|n| n.clone()).unwrap_or_default();
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let client = real_cluster_client(&path).await;
                remove_test_objects(&client, &namespace, &nodes).await;
            });
        })
        .join();
        if done.is_err() {
            eprintln!("cleanup after a failed test did not finish");
        }
    }
}

/// Force-deletes the namespace's pods (no kubelet will confirm a graceful delete), then
/// deletes the Nodes and the namespace.
async fn remove_test_objects(client: &Client, namespace: &str, nodes: &[String]) {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    if let Ok(list) = pods.list(&ListParams::default()).await {
        for p in list.items {
            let _ = pods
                .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                .await;
        }
    }
    let node_api = Api::<Node>::all(client.clone());
    for n in nodes {
        let _ = node_api.delete(n, &DeleteParams::default()).await;
    }
    let _ = Api::<Namespace>::all(client.clone())
        .delete(namespace, &DeleteParams::default())
        .await;
}

async fn real_cluster_client(path: &std::ffi::OsStr) -> Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("read BINDLET_TEST_KUBECONFIG");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    Client::try_from(cfg).expect("client")
}

/// Whether `crd`'s schema declares `status.nodeVerification` (otherwise the API server
/// prunes it).
fn crd_keeps_verification(crd: &CustomResourceDefinition) -> bool {
    crd.spec.versions.iter().any(|v| {
        v.schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|root| root.properties.as_ref()?.get("status"))
            .and_then(|status| status.properties.as_ref())
            .is_some_and(|p| p.contains_key("nodeVerification"))
    })
}

/// Installs bindlet's CRD on a real cluster when no BindRequest CRD is there yet; returns
/// the installed one (bindlet's or KAI's).
async fn ensure_crd(client: &Client) -> CustomResourceDefinition {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    if let Some(installed) = crds
        .get_opt("bindrequests.scheduling.run.ai")
        .await
        .expect("get CRD")
    {
        return installed;
    }
    let created = match crds
        .create(&PostParams::default(), &bindlet::api::crd())
        .await
    {
        Ok(c) => c,
        // Another test process installed it meanwhile.
        Err(kube::Error::Api(e)) if e.code == 409 => crds
            .get("bindrequests.scheduling.run.ai")
            .await
            .expect("get CRD"),
        Err(e) => panic!("create CRD: {e}"),
    };
    wait_until(Duration::from_secs(30), "CRD established", || async {
        crds.get_opt("bindrequests.scheduling.run.ai")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
    created
}

/// Retries a call that failed below HTTP (a pooled connection cut by an API server
/// restart); API answers are returned as they are.
async fn retry_transport<T, F, Fut>(mut f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut tries = 0;
    loop {
        match f().await {
            Err(e) if !matches!(e, kube::Error::Api(_)) && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// Polls `f` every 20 ms until it is true or `timeout` passes; returns whether it became true.
pub async fn poll<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(poll(timeout, f).await, "timed out waiting until {what}");
}

/// Reason text of a request's status.
pub fn reason(br: &BindRequest) -> String {
    br.status
        .as_ref()
        .and_then(|s| s.reason.clone())
        .unwrap_or_default()
}

pub fn attempts(br: &BindRequest) -> i32 {
    br.failed_attempts()
}

/// A core/v1 Event in events.k8s.io/v1 form, as the API server converts it.
pub fn core_as_events_v1(e: CoreEvent) -> Event {
    let event_time = e.event_time.clone().or_else(|| {
        e.last_timestamp
            .as_ref()
            .or(e.first_timestamp.as_ref())
            .map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(t.0))
    });
    Event {
        metadata: e.metadata,
        event_time,
        action: e.action,
        reason: e.reason,
        note: e.message,
        type_: e.type_,
        regarding: Some(e.involved_object),
        related: e.related,
        reporting_controller: e.reporting_component,
        reporting_instance: e.reporting_instance,
        deprecated_source: e.source,
        deprecated_count: e.count,
        deprecated_first_timestamp: e.first_timestamp,
        deprecated_last_timestamp: e.last_timestamp,
        series: None,
    }
}
