//! The effects of `bind` and `explain`: read the snapshot, run the pure checks, write (a
//! BindRequest, or the Binding with `--direct`), follow, print. Every API call has a timeout.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

use crate::agent::effects::Effects;
use crate::api::{BindRequest, Phase};
use crate::binding::{self, BindFault};
use crate::kubeapi::{ApiError, Kube, NoObserver, call};

use super::checks::{self, Snapshot};
use super::render::{self, EventLine};
use super::{
    BindArgs, EXIT_DONE, EXIT_FAILED, EXIT_PENDING, EXIT_REFUSED, ExplainArgs, ManualError,
};

/// How `bindlet bind` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    /// Bound now, or already bound to that node.
    Done,
    /// `--dry-run`: every check passed, nothing written.
    DryRunPassed,
    /// Refused before anything was written (or another BindRequest for the pod exists).
    Refused,
    /// The bind was attempted and failed.
    Failed,
    /// The BindRequest did not settle within `--wait`.
    Pending,
}

impl BindOutcome {
    pub fn exit_code(self) -> i32 {
        match self {
            BindOutcome::Done | BindOutcome::DryRunPassed => EXIT_DONE,
            BindOutcome::Refused => EXIT_REFUSED,
            BindOutcome::Failed => EXIT_FAILED,
            BindOutcome::Pending => EXIT_PENDING,
        }
    }
}

/// Any status the agent counts as settled for a request without `backoffLimit` (which is
/// how bindlet writes them); the default only matters for requests that set one.
const DEFAULT_BACKOFF_LIMIT: i32 = 3;
const POLL: Duration = Duration::from_millis(200);
const LIST_PAGE: u32 = 500;

fn namespace_of(client: &Client, ns: &Option<String>) -> String {
    ns.clone()
        .unwrap_or_else(|| client.default_namespace().to_string())
}

/// `bindlet bind`: checks, then (unless `--dry-run`) a BindRequest followed until it settles,
/// or with `--direct` the Binding itself.
pub async fn bind(
    client: &Client,
    args: &BindArgs,
    out: &mut dyn Write,
) -> Result<BindOutcome, ManualError> {
    let timeout = args.cluster.api_timeout;
    let ns = namespace_of(client, &args.cluster.namespace);
    let node_name = args.node.as_str();
    let effects = Effects::new(Kube::new(client.clone(), timeout, Arc::new(NoObserver)));
    let pod = effects
        .get_pod(&ns, &args.pod)
        .await
        .map_err(ManualError::api(format!("reading pod {ns}/{}", args.pod)))?;
    let Some(pod) = pod else {
        writeln!(
            out,
            "refused: pod {ns}/{} not found; nothing was written",
            args.pod
        )?;
        return Ok(BindOutcome::Refused);
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let node = call(timeout, nodes.get_opt(node_name))
        .await
        .map_err(ManualError::api(format!("reading node {node_name}")))?;
    let on_node = match &node {
        Some(_) => pods_on_node(client, node_name, timeout).await?,
        None => Vec::new(),
    };
    let report = checks::check(&Snapshot {
        node_name,
        node: node.as_ref(),
        pod: &pod,
        pods_on_node: &on_node,
    });
    writeln!(out, "checks for pod {ns}/{} on node {node_name}:", args.pod)?;
    write!(out, "{}", render::verdict_lines(&report.verdicts, "  "))?;
    if report.refused() {
        writeln!(
            out,
            "refused: {} check(s) failed; nothing was written",
            report.failed().len()
        )?;
        return Ok(BindOutcome::Refused);
    }
    if report.already_bound_here {
        writeln!(
            out,
            "done: pod {ns}/{} is already bound to node {node_name}; nothing to do",
            args.pod
        )?;
        return Ok(BindOutcome::Done);
    }
    if args.dry_run {
        writeln!(out, "dry run: every check passed; nothing was written")?;
        return Ok(BindOutcome::DryRunPassed);
    }
    if args.direct {
        // A live request elsewhere means the scheduler placed the pod there: do not race it.
        let brs: Api<BindRequest> = Api::namespaced(client.clone(), &ns);
        let existing = call(timeout, brs.get_opt(&args.pod))
            .await
            .map_err(ManualError::api(format!(
                "reading BindRequest {ns}/{}",
                args.pod
            )))?;
        if let Some(br) = existing.filter(|b| !binding::is_settled(b, DEFAULT_BACKOFF_LIMIT))
            && selected_node(&br) != Some(node_name)
        {
            writeln!(
                out,
                "refused: BindRequest {ns}/{} asks for node {} and is not settled; nothing was written (see `bindlet explain -n {ns} {}`)",
                args.pod,
                selected_node(&br).unwrap_or("(none)"),
                args.pod
            )?;
            return Ok(BindOutcome::Refused);
        }
        return bind_direct(&effects, &pod, &ns, node_name, out).await;
    }
    through_agent(client, &pod, &ns, node_name, args.wait, timeout, out).await
}

/// Pods bound to the node, read page by page with a field selector (never cluster-wide).
async fn pods_on_node(
    client: &Client,
    node: &str,
    timeout: Duration,
) -> Result<Vec<Pod>, ManualError> {
    let api: Api<Pod> = Api::all(client.clone());
    let mut lp = ListParams::default()
        .fields(&format!("spec.nodeName={node}"))
        .limit(LIST_PAGE);
    let mut pods = Vec::new();
    loop {
        let page = call(timeout, api.list(&lp))
            .await
            .map_err(ManualError::api(format!("listing the pods on node {node}")))?;
        pods.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(pods),
        }
    }
}

async fn bind_direct(
    effects: &Effects,
    pod: &Pod,
    ns: &str,
    node: &str,
    out: &mut dyn Write,
) -> Result<BindOutcome, ManualError> {
    let name = pod.name_any();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    match effects.bind_pod(ns, &name, &uid, node).await {
        Ok(()) => {
            writeln!(
                out,
                "done: pod {ns}/{name} bound to node {node} (Binding posted directly; GPUs, volumes and claims were not verified on the node)"
            )?;
            let note = format!(
                "Bound {ns}/{name} to node {node} by `bindlet bind --direct` after command-line checks"
            );
            if let Err(e) = write_event(effects, pod, "Bound", &note).await {
                writeln!(out, "note: could not record an Event: {e}")?;
            }
            Ok(BindOutcome::Done)
        }
        Err(BindFault::AlreadyBoundHere) => {
            writeln!(out, "done: pod {ns}/{name} is already bound to node {node}")?;
            Ok(BindOutcome::Done)
        }
        Err(BindFault::Failed(f)) => {
            writeln!(out, "failed: {f}")?;
            Ok(BindOutcome::Failed)
        }
        Err(BindFault::Transient(msg)) => Err(ManualError::Transient(msg)),
    }
}

/// A Normal Event on the pod, so `explain` shows manual binds too.
async fn write_event(
    effects: &Effects,
    pod: &Pod,
    reason: &str,
    note: &str,
) -> Result<(), ApiError> {
    let ns = pod.namespace().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let stem: String = pod.name_any().chars().take(200).collect();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{stem}.{:x}",
                now.as_nanosecond() as u128 ^ rand::random::<u32>() as u128
            )),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("Binding".into()),
        reason: Some(reason.into()),
        note: Some(note.into()),
        type_: Some("Normal".into()),
        regarding: Some(crate::api::refs::reference_to::<Pod>(
            Some(ns.clone()),
            pod.metadata.name.clone(),
            pod.metadata.uid.clone(),
        )),
        reporting_controller: Some("bindlet".into()),
        reporting_instance: Some("bindlet-cli".into()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(effects.client().clone(), &ns);
    call(
        effects.timeout(),
        api.create(&PostParams::default(), &event),
    )
    .await
    .map(|_| ())
}

fn selected_node(br: &BindRequest) -> Option<&str> {
    br.spec.selected_node.as_deref().or_else(|| {
        br.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::api::SELECTED_NODE_LABEL))
            .map(String::as_str)
    })
}

async fn through_agent(
    client: &Client,
    pod: &Pod,
    ns: &str,
    node: &str,
    wait: Duration,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<BindOutcome, ManualError> {
    let name = pod.name_any();
    let br = super::request::bind_request(pod, node).map_err(ManualError::Build)?;
    let api: Api<BindRequest> = Api::namespaced(client.clone(), ns);
    match call(timeout, api.create(&PostParams::default(), &br)).await {
        Ok(_) => writeln!(
            out,
            "wrote BindRequest {ns}/{name} for node {node}; waiting for the node's agent to verify and bind"
        )?,
        Err(ApiError::Status { code: 409, .. }) => {
            let existing = call(timeout, api.get_opt(&name))
                .await
                .map_err(ManualError::api(format!("reading BindRequest {ns}/{name}")))?;
            match existing.as_ref().map(selected_node) {
                Some(Some(n)) if n == node => writeln!(
                    out,
                    "a BindRequest {ns}/{name} for node {node} already exists; following it (not replaced)"
                )?,
                Some(other) => {
                    writeln!(
                        out,
                        "refused: a BindRequest {ns}/{name} already exists for node {}; it was not replaced (see `bindlet explain -n {ns} {name}`; delete it to place the pod elsewhere)",
                        other.unwrap_or("(none)")
                    )?;
                    return Ok(BindOutcome::Refused);
                }
                // Deleted between the two calls: let the follow loop report it.
                None => {}
            }
        }
        Err(e) => {
            return Err(ManualError::Api {
                what: format!("writing BindRequest {ns}/{name}"),
                source: e,
            });
        }
    }
    follow(client, &api, ns, &name, node, wait, timeout, out).await
}

/// Polls the request until it settles (or is deleted, or `wait` passes), printing each
/// change of phase, attempts or reason.
#[allow(clippy::too_many_arguments)]
async fn follow(
    client: &Client,
    api: &Api<BindRequest>,
    ns: &str,
    name: &str,
    node: &str,
    wait: Duration,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<BindOutcome, ManualError> {
    let start = tokio::time::Instant::now();
    let mut last_seen: Option<(Option<String>, i32, Option<String>)> = None;
    loop {
        let br = match call(timeout, api.get_opt(name)).await {
            Ok(b) => b,
            // Keep following through a blip; a persistent outage ends at the deadline.
            Err(e) if start.elapsed() < wait => {
                tracing::debug!(error = %e, "reading the BindRequest failed; retrying");
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => {
                return Err(ManualError::Api {
                    what: format!("reading BindRequest {ns}/{name}"),
                    source: e,
                });
            }
        };
        let Some(br) = br else {
            return deleted(client, ns, name, node, timeout, out).await;
        };
        let status = br.status.clone().unwrap_or_default();
        let now = (
            status.phase.clone(),
            br.failed_attempts(),
            status.reason.clone(),
        );
        if last_seen.as_ref() != Some(&now) {
            if br.failed_attempts() > 0 && br.phase() == Some(Phase::Pending) {
                writeln!(
                    out,
                    "  attempt {} failed, the agent retries: {}",
                    br.failed_attempts(),
                    status.reason.as_deref().unwrap_or("")
                )?;
            }
            last_seen = Some(now);
        }
        if binding::is_settled(&br, DEFAULT_BACKOFF_LIMIT) {
            let reason = status.reason.as_deref().unwrap_or("");
            let failed_checks: Vec<_> = status
                .node_verification
                .as_ref()
                .map(|v| {
                    v.verdicts
                        .iter()
                        .filter(|v| v.outcome != crate::api::VerdictOutcome::Pass)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            return Ok(if br.phase() == Some(Phase::Succeeded) {
                writeln!(out, "done: {reason}")?;
                BindOutcome::Done
            } else {
                writeln!(
                    out,
                    "failed: the agent on node {node} gave up after {} attempt(s): {reason}",
                    br.failed_attempts()
                )?;
                if !failed_checks.is_empty() {
                    writeln!(out, "checks on the node that did not pass:")?;
                    write!(out, "{}", render::verdict_lines(&failed_checks, "  "))?;
                }
                writeln!(
                    out,
                    "the BindRequest stays for the record (`bindlet explain -n {ns} {name}`); delete it before trying again"
                )?;
                BindOutcome::Failed
            });
        }
        if start.elapsed() >= wait {
            writeln!(
                out,
                "pending: BindRequest {ns}/{name} did not settle within {wait:?} ({}); is a bindlet agent running on node {node}? See `bindlet explain -n {ns} {name}`",
                render::phase_text(&br)
            )?;
            return Ok(BindOutcome::Pending);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The request vanished before settling (the scheduler deletes finished-failed ones, or a
/// person did): the pod says what happened.
async fn deleted(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<BindOutcome, ManualError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = call(timeout, pods.get_opt(name))
        .await
        .map_err(ManualError::api(format!("reading pod {ns}/{name}")))?;
    let bound = pod.and_then(|p| p.spec).and_then(|s| s.node_name);
    if bound.as_deref() == Some(node) {
        writeln!(
            out,
            "done: the BindRequest was deleted, and pod {ns}/{name} is bound to node {node}"
        )?;
        Ok(BindOutcome::Done)
    } else {
        writeln!(
            out,
            "failed: the BindRequest {ns}/{name} was deleted before it settled; the pod is {}",
            bound.map_or("not bound".to_string(), |n| format!("bound to node {n}"))
        )?;
        Ok(BindOutcome::Failed)
    }
}

/// `bindlet explain`: the BindRequest (or the pod) of that name, its verdicts and Events.
pub async fn explain(
    client: &Client,
    args: &ExplainArgs,
    out: &mut dyn Write,
) -> Result<(), ManualError> {
    let timeout = args.cluster.api_timeout;
    let ns = namespace_of(client, &args.cluster.namespace);
    let name = args.name.as_str();
    let brs: Api<BindRequest> = Api::namespaced(client.clone(), &ns);
    let br = call(timeout, brs.get_opt(name))
        .await
        .map_err(ManualError::api(format!("reading BindRequest {ns}/{name}")))?;
    let pod_name = br
        .as_ref()
        .and_then(|b| b.spec.pod_name.clone())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| name.to_string());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = call(timeout, pods.get_opt(&pod_name))
        .await
        .map_err(ManualError::api(format!("reading pod {ns}/{pod_name}")))?;
    if br.is_none() && pod.is_none() {
        return Err(ManualError::NothingToExplain {
            namespace: ns,
            name: name.to_string(),
        });
    }
    let mut names = vec![("BindRequest", name.to_string()), ("Pod", pod_name.clone())];
    names.dedup_by(|a, b| a.1 == b.1);
    let mut events = Vec::new();
    for (_, n) in &names {
        events.extend(events_about(client, &ns, n, timeout).await?);
    }
    events.retain(|e: &EventLine| {
        e.regarding == format!("BindRequest/{name}") || e.regarding == format!("Pod/{pod_name}")
    });
    events.sort_by_key(|e| e.time);
    events.dedup();
    write!(
        out,
        "{}",
        render::explain_text(&ns, name, br.as_ref(), pod.as_ref(), &events)
    )?;
    Ok(())
}

/// Events (events.k8s.io/v1, which also serves core Events) about objects named `name` in `ns`.
async fn events_about(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<Vec<EventLine>, ManualError> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let list = match call(timeout, api.list(&lp)).await {
        Ok(l) => l.items,
        // A server that does not know the field label: read the namespace's Events instead.
        Err(ApiError::Status { code: 400, .. }) => {
            call(timeout, api.list(&ListParams::default()))
                .await
                .map_err(ManualError::api(format!("listing Events in {ns}")))?
                .items
        }
        Err(e) => {
            return Err(ManualError::Api {
                what: format!("listing Events in {ns}"),
                source: e,
            });
        }
    };
    // The agent writes the pod's Bound / BindingError through core/v1 (as KAI's binder
    // does). A real server lists every Event through both APIs; a server that keeps them
    // apart (the simulator) needs both read. Same uid: the same Event.
    let seen: std::collections::HashSet<String> =
        list.iter().filter_map(|e| e.metadata.uid.clone()).collect();
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
    let core_list = match call(timeout, core.list(&lp)).await {
        Ok(l) => l.items,
        Err(e) => {
            tracing::debug!(error = %e, "listing core Events failed; showing events.k8s.io only");
            Vec::new()
        }
    };
    let mut lines: Vec<EventLine> = core_list
        .into_iter()
        .filter(|e| e.metadata.uid.as_ref().is_none_or(|u| !seen.contains(u)))
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| EventLine {
            time: e
                .event_time
                .as_ref()
                .map(|t| t.0)
                .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            regarding: format!(
                "{}/{name}",
                e.involved_object.kind.as_deref().unwrap_or("?")
            ),
            note: e.message.clone().unwrap_or_default(),
            count: e.count.unwrap_or(1),
        })
        .collect();
    lines.extend(list.into_iter().filter_map(|e| {
        let r = e.regarding.as_ref()?;
        if r.name.as_deref() != Some(name) {
            return None;
        }
        let regarding = format!("{}/{name}", r.kind.as_deref().unwrap_or("?"));
        let time = e
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
        Some(EventLine {
            time,
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            regarding,
            note: e.note.clone().unwrap_or_default(),
            count: e
                .series
                .as_ref()
                .map(|s| s.count)
                .or(e.deprecated_count)
                .unwrap_or(1),
        })
    }));
    Ok(lines)
}
