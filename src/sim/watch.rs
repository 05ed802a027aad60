//! Watch streams: newline-delimited JSON events over a chunked response, fed from a bounded
//! per-watch channel; the writer side never blocks on a watcher.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::registry::ResourceDef;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Event, EventType, WatchInit, WatchStart, encode_event, for_version};

/// Body chunks buffered towards one client before the watch task waits on it.
const BODY_BUFFER: usize = 256;

pub(crate) struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    fn is_all(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
    fn passes(&self, o: &Value) -> bool {
        self.labels.matches(o) && self.fields.matches(o)
    }
}

pub(crate) struct WatchRequest {
    pub def: Arc<ResourceDef>,
    pub ns: Option<String>,
    pub start: WatchStart,
    /// Send a BOOKMARK annotated `k8s.io/initial-events-end` after the snapshot.
    pub initial_events_end: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub filter: Filter,
}

/// Opens a watch; answers the receiver of body chunks (the stream ends when it closes).
pub(crate) fn open(sh: &Arc<Shared>, req: WatchRequest) -> mpsc::Receiver<Bytes> {
    let (body_tx, body_rx) = mpsc::channel(BODY_BUFFER);
    let init = {
        let mut st = sh.lock_state();
        st.register_watch(&req.def, req.ns.as_deref(), req.start)
    };
    match init {
        Err(e) => {
            // A too-old resourceVersion is answered 200 with one ERROR event, like the watch cache.
            let line = encode_event("ERROR", &e.to_status());
            let _ = body_tx.try_send(line);
        }
        Ok(init) => {
            let cancel = sh.watch_token();
            let sh2 = sh.clone();
            tokio::spawn(async move {
                run(sh2, req, init, body_tx, cancel).await;
            });
        }
    }
    body_rx
}

/// Removes the watch from the store however the task ends.
struct Registration {
    sh: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sh.lock_state().deregister(self.id);
    }
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end && let Some(m) = metadata.as_object_mut() {
        m.insert(
            "annotations".into(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    let obj = json!({"apiVersion": def.api_version(), "kind": def.kind, "metadata": metadata});
    encode_event("BOOKMARK", &obj)
}

fn with_rv(obj: &Value, rv: u64) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    o
}

/// What this watcher sees of one event (selector transitions like the watch cache).
fn convert(def: &ResourceDef, f: &Filter, ev: &Event) -> Option<Bytes> {
    let same_version =
        ev.object.get("apiVersion").and_then(Value::as_str) == Some(def.api_version().as_str());
    if f.is_all() {
        return Some(if same_version {
            ev.line()
        } else {
            encode_event(ev.etype.as_str(), &for_version(def, &ev.object))
        });
    }
    let encode = |t: &str, o: &Arc<Value>| encode_event(t, &for_version(def, o));
    match ev.etype {
        EventType::Added => f.passes(&ev.object).then(|| {
            if same_version {
                ev.line()
            } else {
                encode("ADDED", &ev.object)
            }
        }),
        EventType::Deleted => {
            let basis = ev.prev.as_ref().unwrap_or(&ev.object);
            f.passes(basis).then(|| {
                if same_version {
                    ev.line()
                } else {
                    encode("DELETED", &ev.object)
                }
            })
        }
        EventType::Modified => {
            let cur = f.passes(&ev.object);
            let old = ev.prev.as_ref().is_some_and(|p| f.passes(p));
            match (cur, old) {
                (true, true) => Some(if same_version {
                    ev.line()
                } else {
                    encode("MODIFIED", &ev.object)
                }),
                (true, false) => Some(encode("ADDED", &ev.object)),
                (false, true) => {
                    let prev = ev.prev.as_ref()?;
                    Some(encode("DELETED", &Arc::new(with_rv(prev, ev.rv))))
                }
                (false, false) => None,
            }
        }
    }
}

async fn send(tx: &mpsc::Sender<Bytes>, cancel: &CancellationToken, b: Bytes) -> bool {
    tokio::select! {
        r = tx.send(b) => r.is_ok(),
        _ = cancel.cancelled() => false,
    }
}

async fn run(
    sh: Arc<Shared>,
    req: WatchRequest,
    init: WatchInit,
    tx: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
) {
    let WatchInit {
        id,
        mut rx,
        replay,
        snapshot,
        start_rv,
    } = init;
    let _reg = Registration { sh: sh.clone(), id };
    let def = req.def.clone();
    let deadline = req.timeout.map(|t| Instant::now() + t);
    let mut last_rv = start_rv;
    for o in &snapshot {
        if req.filter.passes(o)
            && !send(&tx, &cancel, encode_event("ADDED", &for_version(&def, o))).await
        {
            return;
        }
    }
    if req.initial_events_end && !send(&tx, &cancel, bookmark(&def, start_rv, true)).await {
        return;
    }
    for ev in &replay {
        last_rv = last_rv.max(ev.rv);
        if let Some(b) = convert(&def, &req.filter, ev)
            && !send(&tx, &cancel, b).await
        {
            return;
        }
    }
    let period = sh.bookmark_interval.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    let sleep_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_deadline);
    // Like the watch cache, a bookmark goes out 2 s before a timeout (none for shorter watches).
    let mut final_bookmark = deadline
        .filter(|_| req.bookmarks && req.timeout.is_some_and(|t| t > Duration::from_secs(2)))
        .map(|d| d - Duration::from_secs(2));
    loop {
        let final_at = final_bookmark;
        let sleep_final = async {
            match final_at {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            ev = rx.recv() => match ev {
                Some(ev) => {
                    last_rv = last_rv.max(ev.rv);
                    if let Some(b) = convert(&def, &req.filter, &ev)
                        && !send(&tx, &cancel, b).await
                    {
                        return;
                    }
                }
                // Dropped by the store (too slow, drop_watches, restart): end the stream.
                None => return,
            },
            _ = &mut sleep_deadline => return,
            _ = sleep_final => {
                final_bookmark = None;
                match drain_then_rv(&sh, &def, &req.filter, &mut rx, &tx, &cancel, &mut last_rv).await {
                    Some(rv) => {
                        if !send(&tx, &cancel, bookmark(&def, rv, false)).await {
                            return;
                        }
                    }
                    None => return,
                }
            }
            _ = tick.tick(), if req.bookmarks => {
                match drain_then_rv(&sh, &def, &req.filter, &mut rx, &tx, &cancel, &mut last_rv).await {
                    Some(rv) => {
                        if !send(&tx, &cancel, bookmark(&def, rv, false)).await {
                            return;
                        }
                    }
                    None => return,
                }
            }
        }
    }
}

/// Delivers everything already queued, then answers a resourceVersion safe for a bookmark:
/// every event at or below it has been delivered (writers enqueue before publishing the rv).
#[allow(clippy::too_many_arguments)]
async fn drain_then_rv(
    sh: &Arc<Shared>,
    def: &ResourceDef,
    filter: &Filter,
    rx: &mut mpsc::Receiver<Arc<Event>>,
    tx: &mpsc::Sender<Bytes>,
    cancel: &CancellationToken,
    last_rv: &mut u64,
) -> Option<u64> {
    let global = sh.current_rv.load(Ordering::Acquire);
    loop {
        match rx.try_recv() {
            Ok(ev) => {
                *last_rv = (*last_rv).max(ev.rv);
                if let Some(b) = convert(def, filter, &ev)
                    && !send(tx, cancel, b).await
                {
                    return None;
                }
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
        }
    }
    Some(global.max(*last_rv))
}

/// Parses a watch/list `resourceVersion`.
pub(crate) fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))
}
