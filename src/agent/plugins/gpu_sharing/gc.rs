//! The background collector of reservation pods no group needs any more (started by `setup` when sharing is on; acts only while leading).

use super::*;

/// Groups named by this node's BindRequests that are not settled yet.
pub type PendingGroups = Arc<dyn Fn() -> BTreeSet<String> + Send + Sync>;

/// Removes unused and refused reservation pods every `--reservation-gc-interval`, while
/// `leading()` says this agent holds the node's Lease. Returns what it removed per round
/// through the log; errors wait for the next round.
pub async fn collect_loop(
    api: SharingApi,
    args: SharingArgs,
    pending: PendingGroups,
    leading: Arc<dyn Fn() -> bool + Send + Sync>,
    stop: CancellationToken,
) {
    let interval = args.reservation_gc_interval.max(Duration::from_millis(100));
    let mut wait = interval;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if !leading() {
            continue;
        }
        let pending = pending();
        let busy = match collect_once(&api, &args, &pending).await {
            Ok(removed) => !removed.is_empty() || !pending.is_empty(),
            Err(e) => {
                tracing::warn!(error = %e, "GPU reservation garbage collection failed; retrying next round");
                true
            }
        };
        wait = next_gc_wait(interval, wait, busy);
    }
}

/// Rounds on a node with nothing to collect and no fraction request pending back off, up to
/// this many intervals: every round is a LIST per node, and on an idle fleet it was a third
/// of each agent's idle API requests (one per 30 s against the Lease's one per 15 s).
pub(super) const GC_IDLE_BACKOFF: u32 = 8;

/// The wait before the next garbage-collection round: `interval` after a round that removed
/// a pod or saw a pending fraction request (or failed), else double the last wait, capped
/// at `GC_IDLE_BACKOFF` intervals. An unused reservation pod is then removed within
/// 8 intervals (4 min by default) plus the grace period on an otherwise idle node.
pub fn next_gc_wait(interval: Duration, previous: Duration, busy: bool) -> Duration {
    if busy {
        interval
    } else {
        (previous * 2).clamp(interval, interval * GC_IDLE_BACKOFF)
    }
}

/// One round of garbage collection; returns the reservation pods removed.
pub async fn collect_once(
    api: &SharingApi,
    args: &SharingArgs,
    pending: &BTreeSet<String>,
) -> Result<Vec<decide::Collect>, String> {
    let scope = args.scope();
    let grace = args.reservation_gc_grace;
    // Most rounds find no reservation pod at all: ask for those alone first (a label and
    // node selector in one namespace), and read every pod of the node only when there is
    // one to judge. A node's full pod list decoded every round was most of the agent's
    // memory on a node with thousands of pods.
    if api.reservation_pods(&scope).await?.is_empty() {
        return Ok(Vec::new());
    }
    let first = decide::node_groups(&api.pods.list().await?, &scope);
    let candidates = decide::collect(&first, pending, &BTreeSet::new(), now(), grace);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // Take the groups' locks (skipping groups with a bind in flight), then decide again
    // on a fresh read: a bind may have labelled a pod between the first read and now.
    let mut guards = BTreeMap::new();
    let mut busy = BTreeSet::new();
    for c in &candidates {
        if guards.contains_key(&c.group) || busy.contains(&c.group) {
            continue;
        }
        match api.locks.try_lock(&c.group) {
            Some(g) => {
                guards.insert(c.group.clone(), g);
            }
            None => {
                busy.insert(c.group.clone());
            }
        }
    }
    let fresh = decide::node_groups(&api.pods.list().await?, &scope);
    let mut removed = Vec::new();
    for c in decide::collect(&fresh, pending, &busy, now(), grace) {
        if !guards.contains_key(&c.group) {
            continue;
        }
        match api.delete_pod(&scope.namespace, &c.pod, &c.uid).await {
            Ok(()) => {
                tracing::info!(group = %c.group, pod = %c.pod, why = %c.why, "removed GPU reservation pod");
                removed.push(c);
            }
            Err(e) => tracing::warn!(pod = %c.pod, error = %e, "could not delete reservation pod"),
        }
    }
    Ok(removed)
}

pub(super) fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

#[cfg(test)]
mod gc_wait_tests {
    use super::*;

    #[test]
    fn idle_garbage_collection_backs_off_and_work_resets_it() {
        let s = Duration::from_secs;
        // (previous wait, busy) -> next wait, with a 30 s interval
        let table = [
            (s(30), false, s(60)),
            (s(60), false, s(120)),
            (s(120), false, s(240)),
            (s(240), false, s(240)),
            (s(240), true, s(30)),
            (s(60), true, s(30)),
            (s(30), true, s(30)),
        ];
        for (previous, busy, want) in table {
            assert_eq!(
                next_gc_wait(s(30), previous, busy),
                want,
                "{previous:?} {busy}"
            );
        }
    }
}
