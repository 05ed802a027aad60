//! A work queue keyed by object: each key is queued at most once, handed to at most one
//! worker at a time (a key added while in flight is re-queued when the worker is done),
//! and retried after a per-key delay.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Namespace and name of a BindRequest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Set when the object was deleted while a worker held it.
#[derive(Debug, Clone, Default)]
pub struct Cancelled(Arc<AtomicBool>);

impl Cancelled {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What to do with a key after a worker is done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing more to do (until a watch event adds it again).
    Forget,
    /// Retry after this delay.
    After(Duration),
}

#[derive(Default)]
struct State {
    ready: VecDeque<Key>,
    queued: HashSet<Key>,
    in_flight: HashMap<Key, Cancelled>,
    /// Added while in flight: queue again when done. `true` for a hard add, which also
    /// overrides a retry delay the worker asks for.
    dirty: HashMap<Key, bool>,
    delayed: BTreeMap<(Instant, u64), Key>,
    due: HashMap<Key, (Instant, u64)>,
    seq: u64,
    closed: bool,
}

impl State {
    fn push_ready(&mut self, key: Key) {
        if let Some(at) = self.due.remove(&key) {
            self.delayed.remove(&at);
        }
        if self.queued.insert(key.clone()) {
            self.ready.push_back(key);
        }
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.due.remove(&key);
            if self.in_flight.contains_key(&key) {
                self.dirty.entry(key).or_insert(false);
            } else if self.queued.insert(key.clone()) {
                self.ready.push_back(key);
            }
        }
    }
}

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
}

impl WorkQueue {
    pub fn new() -> Self {
        WorkQueue::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated in a way
        // that matters more than stopping the agent would, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `key` now; a pending delayed retry is brought forward. For changes that can
    /// make a waiting request succeed (a new request, a changed spec, a changed node).
    pub fn add(&self, key: Key) {
        self.add_inner(key, true);
    }

    /// Queue `key` unless a retry is already scheduled for it. For changes that cannot
    /// change the outcome, such as our own status writes coming back through the watch:
    /// bringing the retry forward would defeat the backoff.
    pub fn add_soft(&self, key: Key) {
        self.add_inner(key, false);
    }

    fn add_inner(&self, key: Key, hard: bool) {
        {
            let mut s = self.lock();
            if s.closed {
                return;
            }
            if s.in_flight.contains_key(&key) {
                let d = s.dirty.entry(key).or_insert(false);
                *d |= hard;
                return;
            }
            if !hard && s.due.contains_key(&key) {
                return;
            }
            s.push_ready(key);
        }
        self.notify.notify_one();
    }

    /// Queue `key` after `delay`, unless it is already due sooner.
    pub fn add_after(&self, key: Key, delay: Duration) {
        let mut s = self.lock();
        if s.closed || s.queued.contains(&key) {
            return;
        }
        let at = Instant::now() + delay;
        if let Some(&(existing, _)) = s.due.get(&key)
            && existing <= at
        {
            return;
        }
        if let Some(old) = s.due.remove(&key) {
            s.delayed.remove(&old);
        }
        s.seq += 1;
        let slot = (at, s.seq);
        s.delayed.insert(slot, key.clone());
        s.due.insert(key, slot);
        drop(s);
        // A sleeping worker may be waiting for a later deadline.
        self.notify.notify_one();
    }

    /// The object is gone: drop it from the queue and tell a worker holding it.
    pub fn remove(&self, key: &Key) {
        let mut s = self.lock();
        if s.queued.remove(key) {
            s.ready.retain(|k| k != key);
        }
        if let Some(at) = s.due.remove(key) {
            s.delayed.remove(&at);
        }
        s.dirty.remove(key);
        if let Some(c) = s.in_flight.get(key) {
            c.set();
        }
    }

    /// Waits for the next ready key; `None` once the queue is shut down.
    pub async fn next(&self) -> Option<(Key, Cancelled)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                s.promote_due(Instant::now());
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    let c = Cancelled::default();
                    s.in_flight.insert(key.clone(), c.clone());
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        self.notify.notify_one();
                    }
                    return Some((key, c));
                }
                s.delayed.first_key_value().map(|(k, _)| k.0)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// A worker finished with `key`.
    pub fn done(&self, key: Key, next: Next) {
        let mut s = self.lock();
        let cancelled = s.in_flight.remove(&key).is_some_and(|c| c.is_set());
        if s.closed || cancelled {
            return;
        }
        // A soft change while in flight does not override the worker's retry delay.
        let dirty = s.dirty.remove(&key);
        if dirty == Some(true) || (dirty.is_some() && next == Next::Forget) {
            s.push_ready(key);
            drop(s);
            self.notify.notify_one();
            return;
        }
        if let Next::After(delay) = next {
            drop(s);
            self.add_after(key, delay);
        }
    }

    /// Stops handing out keys; workers' `next` returns `None`.
    pub fn shutdown(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Keys ready or waiting for a retry.
    pub fn depth(&self) -> usize {
        let s = self.lock();
        s.ready.len() + s.delayed.len()
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }
}

impl crate::diag::QueueView for WorkQueue {
    fn depth(&self) -> usize {
        WorkQueue::depth(self)
    }
    fn in_flight(&self) -> usize {
        WorkQueue::in_flight(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> Key {
        Key {
            namespace: "ns".into(),
            name: n.into(),
        }
    }

    #[tokio::test]
    async fn deduplicates_and_keeps_order() {
        let q = WorkQueue::new();
        q.add(k("a"));
        q.add(k("b"));
        q.add(k("a"));
        assert_eq!(q.depth(), 2);
        assert_eq!(q.next().await.map(|x| x.0), Some(k("a")));
        assert_eq!(q.next().await.map(|x| x.0), Some(k("b")));
        assert_eq!(q.in_flight(), 2);
    }

    #[tokio::test]
    async fn one_worker_per_key_and_requeue_when_dirty() {
        let q = WorkQueue::new();
        q.add(k("a"));
        let (key, _) = q.next().await.expect("key");
        q.add(k("a")); // changed while in flight
        assert_eq!(q.depth(), 0, "not handed out twice at once");
        q.done(key, Next::Forget);
        assert_eq!(q.next().await.map(|x| x.0), Some(k("a")));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_after_delay_and_add_brings_forward() {
        let q = WorkQueue::new();
        q.add(k("a"));
        let (key, _) = q.next().await.expect("key");
        q.done(key, Next::After(Duration::from_secs(5)));
        assert_eq!(q.depth(), 1);
        let start = Instant::now();
        assert_eq!(q.next().await.map(|x| x.0), Some(k("a")));
        assert!(start.elapsed() >= Duration::from_secs(5));

        q.add_after(k("b"), Duration::from_secs(60));
        q.add(k("b"));
        let start = Instant::now();
        assert_eq!(q.next().await.map(|x| x.0), Some(k("b")));
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn soft_adds_keep_the_backoff_hard_adds_override_it() {
        let q = WorkQueue::new();
        q.add(k("a"));
        let (key, _) = q.next().await.expect("key");
        q.add_soft(k("a")); // our own status write echoed by the watch
        q.done(key, Next::After(Duration::from_secs(5)));
        q.add_soft(k("a"));
        let start = Instant::now();
        assert_eq!(q.next().await.map(|x| x.0), Some(k("a")));
        assert!(start.elapsed() >= Duration::from_secs(5), "backoff kept");

        q.add_soft(k("a")); // in flight, soft
        q.add(k("a")); // in flight, hard (e.g. the node was uncordoned)
        q.done(k("a"), Next::After(Duration::from_secs(5)));
        let start = Instant::now();
        assert_eq!(q.next().await.map(|x| x.0), Some(k("a")));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "hard add overrides the delay"
        );
    }

    #[tokio::test]
    async fn remove_cancels_in_flight_and_forgets() {
        let q = WorkQueue::new();
        q.add(k("a"));
        let (key, cancelled) = q.next().await.expect("key");
        assert!(!cancelled.is_set());
        q.remove(&k("a"));
        assert!(cancelled.is_set());
        q.done(key, Next::After(Duration::from_millis(1)));
        assert_eq!(q.depth(), 0, "a deleted object is not retried");
    }

    #[tokio::test]
    async fn shutdown_wakes_waiting_workers() {
        let q = Arc::new(WorkQueue::new());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.shutdown();
        assert!(waiter.await.expect("join").is_none());
    }
}
