//! Kubernetes Events (events.k8s.io/v1), written off the hot path by a small pool of
//! writer tasks fed through a bounded channel. A full channel drops the Event (and
//! counts it) rather than slowing binds down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api_calls::CREATE_EVENT;
use super::effects::{call_as, send_unread};

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

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<EventSpec>,
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
        let diag = Arc::default();
        Self::start_with_recorder(client, controller, instance, timeout, shutdown, diag)
    }

    /// [`EventSink::start`], counting the writes in `diag`.
    pub fn start_with_recorder(
        client: Client,
        controller: String,
        instance: String,
        timeout: Duration,
        shutdown: CancellationToken,
        diag: Arc<crate::diag::Recorder>,
    ) -> (EventSink, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<EventSpec>(BUFFER);
        let counter = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(async move {
            let stream = receiver_stream(rx, shutdown);
            stream
                .for_each_concurrent(WRITERS, |spec| {
                    let (client, diag) = (client.clone(), diag.clone());
                    let (controller, instance) = (controller.clone(), instance.clone());
                    async move {
                        write_event(client, &diag, &controller, &instance, timeout, spec).await;
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
        if self.tx.try_send(spec).is_err() {
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
    rx: mpsc::Receiver<EventSpec>,
    shutdown: CancellationToken,
) -> impl futures::Stream<Item = EventSpec> {
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
    diag: &crate::diag::Recorder,
    controller: &str,
    instance: &str,
    timeout: Duration,
    spec: EventSpec,
) {
    let ns = spec
        .regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let obj_name = spec.regarding.name.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    // client-go names events "<object>.<unique hex>"; a generateName ending in '.' is invalid.
    let stem: String = obj_name.chars().take(200).collect();
    let name = format!(
        "{stem}.{:x}",
        now.as_nanosecond() as u128 ^ rand::random::<u32>() as u128
    );
    let mut note = spec.note;
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
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
    // The created Event in the answer is not needed, so it is not decoded.
    let request = serde_json::to_vec(&event)
        .map_err(kube::Error::SerdeError)
        .and_then(|body| {
            kube::core::Request::new(api.resource_url())
                .create(&PostParams::default(), body)
                .map_err(kube::Error::BuildRequest)
        });
    if let Err(e) = call_as(diag, CREATE_EVENT, timeout, send_unread(&client, request)).await {
        tracing::warn!(error = %e, namespace = %ns, "could not write event");
    }
}
