//! The install manifests in `daemonset/`: every document parses as its Kubernetes type
//! (and round-trips, so a misspelt field fails), kustomize lists them all, the RBAC given
//! to the agent's service account is exactly `API_CALLS` (plus the labelled planned
//! entries), the admission policy restricts that account to its node, the DaemonSet has
//! what a node agent needs, and the agent makes no API call outside `API_CALLS`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bindlet::agent::api_calls::{API_CALLS, ApiCall, PLANNED_API_CALLS};
use bindlet::api::Phase;
use common::TestEnv;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset")
}

#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    crds: Vec<CustomResourceDefinition>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    policies: Vec<ValidatingAdmissionPolicy>,
    policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
    daemonsets: Vec<DaemonSet>,
    flow_schemas: Vec<FlowSchema>,
    priority_levels: Vec<PriorityLevelConfiguration>,
}

/// Drops nulls and empty maps the typed form cannot tell apart from absent fields.
fn normalize(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        v => v,
    }
}

/// Parses as `T` and checks nothing was lost (an unknown or misspelt field would be).
fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {} does not parse: {e}", doc["kind"]));
    let back = normalize(serde_json::to_value(&t).expect("serialize"));
    let mut want = normalize(doc.clone());
    // apiVersion/kind are implied by the type.
    if let (Some(w), Some(b)) = (want.as_object_mut(), back.as_object()) {
        for k in ["apiVersion", "kind"] {
            if !b.contains_key(k) {
                w.remove(k);
            }
        }
    }
    assert_eq!(
        back, want,
        "{file}: {} loses fields when parsed",
        doc["kind"]
    );
    t
}

fn load() -> Manifests {
    let mut m = Manifests::default();
    let mut files: Vec<_> = std::fs::read_dir(dir())
        .expect("daemonset/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for path in files {
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("?")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read");
        for de in serde_yaml::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(de).expect("YAML");
            if doc.is_null() {
                continue;
            }
            let f = file.as_str();
            match doc["kind"].as_str().unwrap_or("") {
                "Namespace" => m.namespaces.push(typed(f, &doc)),
                "CustomResourceDefinition" => m.crds.push(typed(f, &doc)),
                "ServiceAccount" => m.service_accounts.push(typed(f, &doc)),
                "ClusterRole" => m.cluster_roles.push(typed(f, &doc)),
                "ClusterRoleBinding" => m.cluster_role_bindings.push(typed(f, &doc)),
                "Role" => m.roles.push(typed(f, &doc)),
                "RoleBinding" => m.role_bindings.push(typed(f, &doc)),
                "ValidatingAdmissionPolicy" => m.policies.push(typed(f, &doc)),
                "ValidatingAdmissionPolicyBinding" => m.policy_bindings.push(typed(f, &doc)),
                "DaemonSet" => m.daemonsets.push(typed(f, &doc)),
                "FlowSchema" => m.flow_schemas.push(typed(f, &doc)),
                "PriorityLevelConfiguration" => m.priority_levels.push(typed(f, &doc)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    m
}

#[test]
fn kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(dir().join("kustomization.yaml")).expect("kustomization");
    let k: Value = serde_yaml::from_str(&text).expect("YAML");
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(dir())
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
}

/// `kubectl apply -k daemonset/` on a cluster with nothing installed: every namespaced
/// object goes to a namespace the kustomization itself creates, and every service account
/// a workload or binding names is created too.
#[test]
fn install_needs_nothing_that_is_not_in_the_kustomization() {
    let m = load();
    let namespaces: BTreeSet<String> = m
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mut used: Vec<(String, Option<String>)> = Vec::new();
    used.extend(
        m.service_accounts
            .iter()
            .map(|o| ("ServiceAccount".into(), o.metadata.namespace.clone())),
    );
    used.extend(
        m.roles
            .iter()
            .map(|o| ("Role".into(), o.metadata.namespace.clone())),
    );
    used.extend(
        m.role_bindings
            .iter()
            .map(|o| ("RoleBinding".into(), o.metadata.namespace.clone())),
    );
    used.extend(
        m.daemonsets
            .iter()
            .map(|o| ("DaemonSet".into(), o.metadata.namespace.clone())),
    );
    for (kind, ns) in used {
        let ns = ns.unwrap_or_else(|| panic!("a {kind} has no namespace"));
        assert!(
            namespaces.contains(&ns),
            "a {kind} lives in namespace {ns}, which the kustomization does not create"
        );
    }
    let accounts: BTreeSet<(String, String)> = m
        .service_accounts
        .iter()
        .filter_map(|s| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?)))
        .collect();
    for ds in &m.daemonsets {
        let ns = ds.metadata.namespace.clone().unwrap_or_default();
        let sa = ds
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        assert!(accounts.contains(&(ns.clone(), sa.clone())), "{ns}/{sa}");
    }
    // The reservation pods' account, which the ServiceAccount admission plugin looks up.
    let defaults = bindlet::plugins::PluginSettings::default();
    let sharing = &defaults.sharing.args;
    assert!(
        accounts.contains(&(
            sharing.reservation_namespace.clone(),
            sharing.reservation_service_account.clone()
        )),
        "{accounts:?}"
    );
}

/// The agent's (namespace, name) from the DaemonSet.
fn agent_account(m: &Manifests) -> (String, String) {
    assert_eq!(m.daemonsets.len(), 1);
    let ds = &m.daemonsets[0];
    let ns = ds.metadata.namespace.clone().expect("namespace");
    let sa = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.service_account_name.clone())
        .expect("serviceAccountName");
    (ns, sa)
}

fn expand(rules: &[PolicyRule], out: &mut BTreeSet<(String, String, String)>) {
    for r in rules {
        assert!(
            r.non_resource_urls.as_ref().is_none_or(|u| u.is_empty()),
            "the agent needs no non-resource URLs"
        );
        assert!(r.resource_names.is_none(), "resourceNames are not used");
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(g != "*" && res != "*" && v != "*", "no wildcards: {r:?}");
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
}

#[test]
fn rbac_grants_exactly_the_api_calls_the_code_makes() {
    let m = load();
    let (ns, sa) = agent_account(&m);
    assert!(
        m.service_accounts
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(&sa)
                && s.metadata.namespace.as_deref() == Some(&ns))
    );
    let is_agent = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(&ns)
        })
    };
    let mut granted = BTreeSet::new();
    for b in m
        .cluster_role_bindings
        .iter()
        .filter(|b| is_agent(&b.subjects))
    {
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let role = m
            .cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name))
            .expect("bound ClusterRole is in the manifests");
        expand(role.rules.as_deref().unwrap_or(&[]), &mut granted);
    }
    for b in m.role_bindings.iter().filter(|b| is_agent(&b.subjects)) {
        assert_eq!(b.role_ref.kind, "Role", "RoleBindings here bind Roles");
        let role = m
            .roles
            .iter()
            .find(|r| {
                r.metadata.name.as_deref() == Some(&b.role_ref.name)
                    && r.metadata.namespace == b.metadata.namespace
            })
            .expect("bound Role is in the manifests");
        // Leases live only in the agent's own namespace, reservation pods only in KAI's
        // reservation namespace (the agent's default --reservation-namespace).
        let role_ns = role.metadata.namespace.as_deref().unwrap_or_default();
        let reservation_ns =
            bindlet::plugins::gpu_sharing::SharingArgs::default().reservation_namespace;
        let rules = role.rules.as_deref().unwrap_or(&[]);
        if role_ns == reservation_ns {
            let mut here = BTreeSet::new();
            expand(rules, &mut here);
            let pods_only = here.iter().all(|(g, r, _)| g.is_empty() && r == "pods");
            assert!(
                pods_only,
                "the reservation namespace grants only pods: {here:?}"
            );
        } else {
            assert_eq!(role_ns, ns.as_str());
        }
        expand(rules, &mut granted);
    }
    let key = |c: &ApiCall| {
        (
            c.group.to_string(),
            c.resource.to_string(),
            c.verb.to_string(),
        )
    };
    let used: BTreeSet<_> = API_CALLS.iter().map(key).collect();
    let planned: BTreeSet<_> = PLANNED_API_CALLS.iter().map(key).collect();
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "the code calls these, RBAC does not grant them: {missing:?}"
    );
    let allowed: BTreeSet<_> = used.union(&planned).cloned().collect();
    let extra: Vec<_> = granted.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "RBAC grants calls the code never makes: {extra:?}"
    );
    let unplanned: Vec<_> = planned.difference(&granted).collect();
    assert!(
        unplanned.is_empty(),
        "planned calls must be granted (the issue requires them): {unplanned:?}"
    );
    // The issue names these two explicitly.
    assert!(granted.contains(&(
        "resource.k8s.io".into(),
        "resourceclaims/binding".into(),
        "update".into()
    )));
    assert!(granted.contains(&(
        "scheduling.run.ai".into(),
        "bindrequests/status".into(),
        "patch".into()
    )));
}

#[test]
fn admission_policy_restricts_the_agent_to_its_node() {
    let m = load();
    let (ns, sa) = agent_account(&m);
    assert_eq!(m.policies.len(), 1);
    let p = &m.policies[0];
    let name = p.metadata.name.clone().expect("name");
    let spec = p.spec.as_ref().expect("spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let rules = spec
        .match_constraints
        .as_ref()
        .and_then(|c| c.resource_rules.clone())
        .expect("resourceRules");
    let covers = |res: &str, op: &str| {
        rules.iter().any(|r| {
            r.resources.iter().flatten().any(|x| x == res)
                && r.operations.iter().flatten().any(|o| o == op)
        })
    };
    assert!(covers("pods/binding", "CREATE"));
    for op in ["CREATE", "UPDATE", "DELETE"] {
        assert!(
            covers("pods", op),
            "reservation pods and group labels: {op}"
        );
        assert!(covers("configmaps", op), "GPU-sharing ConfigMaps: {op}");
    }
    assert!(
        covers("bindrequests/status", "UPDATE"),
        "status patches are UPDATEs in admission"
    );
    // Extended-resource claims (KEP-5004): created, un-finalized and deleted by the agent;
    // the pod status names the claim before binding.
    for op in ["CREATE", "UPDATE", "DELETE"] {
        assert!(
            covers("resourceclaims", op),
            "extended-resource claims: {op}"
        );
    }
    assert!(covers("pods/status", "UPDATE"), "pod status patches");
    let conds = spec.match_conditions.clone().unwrap_or_default();
    let user = format!("system:serviceaccount:{ns}:{sa}");
    assert!(
        conds
            .iter()
            .any(|c| c.expression.contains(&format!("\"{user}\""))),
        "the policy must match the DaemonSet's service account {user}: {conds:?}"
    );
    let text = serde_json::to_string(spec).expect("json");
    assert!(text.contains("request.userInfo.extra['authentication.kubernetes.io/node-name']"));
    let vals = spec.validations.clone().unwrap_or_default();
    assert!(
        vals.iter()
            .any(|v| v.expression.contains("variables.nodeName != ''")),
        "tokens without a node name are refused"
    );
    assert!(vals.iter().any(|v| {
        v.expression
            .contains("object.target.name == variables.nodeName")
    }));
    assert!(vals.iter().any(|v| {
        v.expression
            .contains("object.spec.selectedNode == variables.nodeName")
    }));
    // Reservation pods only on this node; group labels only on pods not bound elsewhere.
    assert!(vals.iter().any(|v| {
        v.expression
            .contains("object.spec.nodeName == variables.nodeName")
            && v.expression.contains("request.operation == 'CREATE'")
    }));
    assert!(
        vals.iter()
            .any(|v| { v.expression.contains("object.spec == oldObject.spec") })
    );
    // Pod status: pods on this node, or only extendedResourceClaimStatus on unbound ones.
    assert!(vals.iter().any(|v| {
        v.expression.contains("request.subResource != 'status'")
            && v.expression
                .contains("oldObject.spec.nodeName == variables.nodeName")
            && v.expression
                .contains("variables.podStatusOnlyExtendedClaimChanges")
    }));
    assert!(m.policy_bindings.iter().any(|b| {
        b.spec.policy_name == name && b.spec.validation_actions.iter().any(|a| a == "Deny")
    }));
}

#[test]
fn daemonset_is_a_well_behaved_node_agent() {
    let m = load();
    let ds = &m.daemonsets[0];
    let spec = ds.spec.as_ref().expect("spec");
    let ru = spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .expect("rollingUpdate");
    assert_eq!(serde_json::to_value(&ru.max_surge).expect("json"), json!(1));
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert!(
        pod.node_selector
            .as_ref()
            .is_some_and(|s| s.keys().any(|k| k.contains("gpu")))
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu"))
    );
    let c = &pod.containers[0];
    let env = c.env.clone().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("named metrics port");
    let default_port: u16 = bindlet::diag::DEFAULT_ADDR
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert_eq!(port.container_port, i32::from(default_port));
    for (probe, path) in [
        (&c.liveness_probe, "/livez"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).expect("json"),
            json!("metrics")
        );
    }
    let res = c.resources.as_ref().expect("resources");
    for k in ["cpu", "memory"] {
        assert!(
            res.requests.as_ref().is_some_and(|r| r.contains_key(k)),
            "request {k}"
        );
    }
    assert!(
        res.limits
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.mount_path == "/var/lib/kubelet/pod-resources")
        .expect("pod-resources mount");
    assert_eq!(mount.read_only, Some(true));
    // The agent reads the kubelet's socket in that directory.
    let socket = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "BINDLET_KUBELET_POD_RESOURCES_SOCKET")
        .and_then(|e| e.value.clone())
        .expect("pod-resources socket passed");
    assert!(
        socket.starts_with("/var/lib/kubelet/pod-resources/"),
        "{socket}"
    );
    // Flow control is optional but, when shipped, consistent.
    for fs in &m.flow_schemas {
        let pl = &fs
            .spec
            .as_ref()
            .expect("spec")
            .priority_level_configuration
            .name;
        assert!(
            pl == "leader-election"
                || m.priority_levels
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(pl)),
            "FlowSchema points at unknown priority level {pl}"
        );
    }
    assert!(
        m.namespaces
            .iter()
            .any(|n| n.metadata.name == ds.metadata.namespace)
    );
    assert_eq!(m.crds.len(), 1);
}

/// Run against the simulator: everything the agent actually requests is in `API_CALLS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_makes_no_call_outside_api_calls() {
    let env = TestEnv::new("api-calls").await;
    let Some(sim) = env.sim_or_skip_because(
        "api_calls",
        "counts requests with the simulator's request counter",
    ) else {
        return env.cleanup().await;
    };
    let node = env.node_name("n1");
    let other = env.node_name("n2");
    env.create_node(&node, json!({})).await;
    env.create_node(&other, json!({})).await;
    env.pod_and_request("ok", &node).await;
    let p = env.create_pod("there", json!({ "nodeName": other })).await;
    env.create_request("there", &node, p.metadata.uid.as_deref(), json!({}))
        .await;
    let before = sim.request_count();
    let agent = env.start_agent(env.agent_config(&node)).await;
    env.wait_phase("ok", Phase::Succeeded).await;
    env.wait_phase("there", Phase::Failed).await;
    // Let the Event writers and a Lease renewal run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.stop().await.expect("stop");
    let after = sim.request_count();
    // The test's own reads (wait_phase) are BindRequest gets, which the agent may make too.
    let by_resource: BTreeSet<(String, String)> = API_CALLS
        .iter()
        .map(|c| (c.verb.to_string(), c.resource.to_string()))
        .collect();
    let mut seen = BTreeSet::new();
    for ((verb, resource), n) in &after.0 {
        if *n > before.get(verb, resource) && resource != "discovery" {
            seen.insert((verb.clone(), resource.clone()));
        }
    }
    let outside: Vec<_> = seen.difference(&by_resource).collect();
    assert!(
        outside.is_empty(),
        "requests outside API_CALLS: {outside:?}"
    );
    for must in [
        ("create", "pods/binding"),
        ("patch", "bindrequests/status"),
        ("watch", "bindrequests"),
        ("update", "leases"),
    ] {
        assert!(
            seen.contains(&(must.0.to_string(), must.1.to_string())),
            "expected the agent to make {must:?}; saw {seen:?}"
        );
    }
    env.cleanup().await;
}
