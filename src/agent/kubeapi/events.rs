//! Kubernetes Events (events.k8s.io/v1), written off the hot path by a small pool of
//! writer tasks fed through a bounded channel. A full channel drops the Event (and
//! counts it) rather than slowing binds down.
//!
//! Events that stand in for KAI's binder ([`EventSink::emit_as_component`]) are written
//! through core/v1 instead, as client-go's recorder writes them (`source.component`,
//! `reportingComponent`, first/last timestamp and count): events.k8s.io/v1 refuses a
//! `deprecatedSource` (kube-apiserver `pkg/apis/core/validation/events.go`), and tools
//! watching for KAI's binder select on `source=binder`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::calls::{ApiCall, CREATE_CORE_EVENT, CREATE_EVENT};
use super::{CallObserver, NoObserver, call_as, send_unread};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Debug, Clone)]
pub struct EventSpec {
    pub regarding: ObjectReference,
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

/// One Event waiting to be written: through events.k8s.io/v1 (`component: None`), or
/// through core/v1 as `component` would record it.
#[derive(Debug, Clone)]
struct Queued {
    spec: EventSpec,
    component: Option<&'static str>,
}

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
}

const WRITERS: usize = 4;
const BUFFER: usize = 4096;
/// The API server rejects notes longer than this.
const MAX_NOTE: usize = 1024;

impl EventSink {
    /// Starts the writers; they stop when `shutdown` fires and the queue is drained.
    pub fn start(
        client: Client,
        controller: String,
        instance: String,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> (EventSink, tokio::task::JoinHandle<()>) {
        let diag = Arc::new(NoObserver);
        Self::start_with_recorder(client, controller, instance, timeout, shutdown, diag)
    }

    /// [`EventSink::start`], counting the writes in `diag`.
    pub fn start_with_recorder(
        client: Client,
        controller: String,
        instance: String,
        timeout: Duration,
        shutdown: CancellationToken,
        diag: Arc<dyn CallObserver>,
    ) -> (EventSink, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Queued>(BUFFER);
        let counter = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(async move {
            let stream = receiver_stream(rx, shutdown);
            stream
                .for_each_concurrent(WRITERS, |q| {
                    let (client, diag) = (client.clone(), diag.clone());
                    let (controller, instance) = (controller.clone(), instance.clone());
                    async move {
                        match q.component {
                            None => {
                                write_event(client, &diag, &controller, &instance, timeout, q.spec)
                                    .await
                            }
                            Some(component) => {
                                write_core_event(
                                    client, &diag, component, &instance, timeout, q.spec,
                                )
                                .await
                            }
                        }
                    }
                })
                .await;
        });
        (
            EventSink {
                tx,
                dropped: counter,
            },
            task,
        )
    }

    pub fn emit(&self, spec: EventSpec) {
        self.enqueue(Queued {
            spec,
            component: None,
        });
    }

    /// Writes the Event through core/v1 as `component` records its Events (e.g. KAI's
    /// `binder`), with this agent as the reporting instance.
    pub fn emit_as_component(&self, spec: EventSpec, component: &'static str) {
        self.enqueue(Queued {
            spec,
            component: Some(component),
        });
    }

    fn enqueue(&self, q: Queued) {
        if self.tx.try_send(q).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("event queue full or closed; event dropped");
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Receives until shutdown, then drains what is already queued.
fn receiver_stream(
    rx: mpsc::Receiver<Queued>,
    shutdown: CancellationToken,
) -> impl futures::Stream<Item = Queued> {
    futures::stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
        let item = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = shutdown.cancelled() => rx.try_recv().ok(),
        };
        item.map(|i| (i, (rx, shutdown)))
    })
}

async fn write_event(
    client: Client,
    diag: &dyn CallObserver,
    controller: &str,
    instance: &str,
    timeout: Duration,
    spec: EventSpec,
) {
    let ns = event_namespace(&spec);
    let now = jiff::Timestamp::now();
    let name = event_name(&spec, now);
    let note = shorten(spec.note);
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("Binding".to_string()),
        reason: Some(spec.reason),
        note: Some(note),
        type_: Some(match spec.type_ {
            EventType::Normal => "Normal".to_string(),
            EventType::Warning => "Warning".to_string(),
        }),
        regarding: Some(spec.regarding),
        reporting_controller: Some(controller.to_string()),
        reporting_instance: Some(instance.to_string()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    post_unread(
        &client,
        diag,
        CREATE_EVENT,
        timeout,
        api.resource_url(),
        &event,
        &ns,
    )
    .await;
}

/// POSTs `event` to `url`, best effort: the created object in the answer is not needed, so
/// it is not decoded; a failure is logged.
async fn post_unread(
    client: &Client,
    diag: &dyn CallObserver,
    what: ApiCall,
    timeout: Duration,
    url: &str,
    event: &impl serde::Serialize,
    ns: &str,
) {
    let request = serde_json::to_vec(event)
        .map_err(kube::Error::SerdeError)
        .and_then(|body| {
            kube::core::Request::new(url)
                .create(&PostParams::default(), body)
                .map_err(kube::Error::BuildRequest)
        });
    if let Err(e) = call_as(diag, what, timeout, send_unread(client, request)).await {
        tracing::warn!(error = %e, namespace = %ns, "could not write event");
    }
}

fn event_namespace(spec: &EventSpec) -> String {
    spec.regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

/// client-go names events "<object>.<unique hex>"; a generateName ending in '.' is invalid.
fn event_name(spec: &EventSpec, now: jiff::Timestamp) -> String {
    let obj_name = spec.regarding.name.clone().unwrap_or_default();
    let stem: String = obj_name.chars().take(200).collect();
    format!(
        "{stem}.{:x}",
        now.as_nanosecond() as u128 ^ rand::random::<u32>() as u128
    )
}

fn shorten(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

/// A core/v1 Event shaped like client-go's recorder makes them (`tools/record/event.go`,
/// `makeEvent` and `generateEvent`: `source` the recorder's, `reportingComponent` its
/// component, `reportingInstance` its host): no `eventTime` (so the server applies the
/// legacy validation, which admits `source`), first and last timestamp now, count 1.
/// `source.host` and `reportingInstance` are this agent (KAI's binder leaves them empty), so
/// its Events can be told from KAI's.
fn core_event(spec: EventSpec, component: &str, instance: &str, now: jiff::Timestamp) -> CoreEvent {
    let ns = event_namespace(&spec);
    let name = event_name(&spec, now);
    CoreEvent {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns),
            ..Default::default()
        },
        involved_object: spec.regarding,
        reason: Some(spec.reason),
        message: Some(shorten(spec.note)),
        type_: Some(match spec.type_ {
            EventType::Normal => "Normal".to_string(),
            EventType::Warning => "Warning".to_string(),
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        source: Some(EventSource {
            component: Some(component.to_string()),
            host: Some(instance.to_string()),
        }),
        reporting_component: Some(component.to_string()),
        reporting_instance: Some(instance.to_string()),
        ..Default::default()
    }
}

async fn write_core_event(
    client: Client,
    diag: &dyn CallObserver,
    component: &str,
    instance: &str,
    timeout: Duration,
    spec: EventSpec,
) {
    let event = core_event(spec, component, instance, jiff::Timestamp::now());
    let ns = event.metadata.namespace.clone().unwrap_or_default();
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), &ns);
    post_unread(
        &client,
        diag,
        CREATE_CORE_EVENT,
        timeout,
        api.resource_url(),
        &event,
        &ns,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_event_is_shaped_like_client_go_recorder() {
        let spec = EventSpec {
            regarding: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some("team-a".into()),
                name: Some("web-1".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            type_: EventType::Warning,
            reason: "BindingError".into(),
            note: "x".repeat(2000),
        };
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let e = core_event(spec, "binder", "bindlet-n1", now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("team-a"));
        assert!(
            e.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("web-1."))
        );
        assert_eq!(e.involved_object.name.as_deref(), Some("web-1"));
        assert_eq!(e.reason.as_deref(), Some("BindingError"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(
            e.source.as_ref().and_then(|s| s.component.as_deref()),
            Some("binder")
        );
        assert_eq!(e.reporting_component.as_deref(), Some("binder"));
        assert_eq!(e.reporting_instance.as_deref(), Some("bindlet-n1"));
        assert_eq!(e.count, Some(1));
        assert!(
            e.event_time.is_none(),
            "legacy validation, which admits source"
        );
        assert!(e.message.as_ref().is_some_and(|m| m.len() <= MAX_NOTE));
    }
}
