//! KAI-compatible status computation (design §1), pure.
//!
//! The scheduler treats a request as finished-failed when `phase == Failed` and
//! (`backoffLimit` is unset or `failedAttempts >= backoffLimit`). So `Failed` is only
//! written when bindlet gives up; while retrying the phase stays `Pending` with the
//! latest reason and an increasing `failedAttempts`.

use crate::api::{BindRequest, BindRequestStatus, NodeVerification, Phase};

use super::failure::Failure;

/// What one attempt ended with, as far as the BindRequest status is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// This agent posted the binding.
    Bound,
    /// The pod was already bound to this node (an earlier attempt, or someone else): success.
    AlreadyBound,
    /// The attempt failed for a reason about the request, the pod or the node.
    Failed(Failure),
}

/// The retry limit for a request: its own `spec.backoffLimit`, else the agent's default.
pub fn backoff_limit(br: &BindRequest, default_limit: i32) -> i32 {
    br.spec.backoff_limit.unwrap_or(default_limit).max(1)
}

/// Whether the agent has nothing more to do with this request.
///
/// `Succeeded` is final. `Failed` is final once attempts reached the limit, or when the
/// request has no `backoffLimit` (that is how the scheduler reads it too).
pub fn is_settled(br: &BindRequest, default_limit: i32) -> bool {
    match br.phase() {
        Some(Phase::Succeeded) => true,
        Some(Phase::Failed) => {
            br.spec.backoff_limit.is_none()
                || br.failed_attempts() >= backoff_limit(br, default_limit)
        }
        _ => false,
    }
}

/// The status to write after an attempt, computed from the status as it is now on the
/// server (re-read after a 409) so concurrent writers cannot make `failedAttempts` go back.
pub fn next_status(
    br: &BindRequest,
    outcome: &Outcome,
    default_limit: i32,
    node_name: &str,
    verification: Option<NodeVerification>,
) -> BindRequestStatus {
    let current = br.failed_attempts().max(0);
    let limit = backoff_limit(br, default_limit);
    let (phase, reason, attempts) = match outcome {
        Outcome::Bound => (
            Phase::Succeeded,
            format!("bound to node {node_name} after node-local verification"),
            current,
        ),
        Outcome::AlreadyBound => (
            Phase::Succeeded,
            format!("pod already bound to node {node_name}"),
            current,
        ),
        Outcome::Failed(failure) => {
            let attempts = current.saturating_add(1);
            if failure.is_terminal() {
                // A terminal failure must read as finished to the scheduler even when the
                // request sets a backoffLimit, or its resources stay reserved forever.
                let attempts = match br.spec.backoff_limit {
                    Some(_) => attempts.max(limit),
                    None => attempts,
                };
                (Phase::Failed, failure.to_string(), attempts)
            } else if attempts >= limit {
                (
                    Phase::Failed,
                    format!("{failure} (gave up after {attempts} attempts)"),
                    attempts,
                )
            } else {
                (Phase::Pending, failure.to_string(), attempts)
            }
        }
    };
    BindRequestStatus {
        phase: Some(phase.as_str().to_string()),
        reason: Some(reason),
        failed_attempts: Some(attempts),
        node_verification: verification,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BindRequestSpec;

    fn br(limit: Option<i32>, phase: Option<&str>, attempts: Option<i32>) -> BindRequest {
        let mut br = BindRequest::new(
            "p",
            BindRequestSpec {
                backoff_limit: limit,
                ..Default::default()
            },
        );
        br.status = Some(BindRequestStatus {
            phase: phase.map(str::to_string),
            failed_attempts: attempts,
            ..Default::default()
        });
        br
    }

    fn retryable() -> Outcome {
        Outcome::Failed(Failure::PodNotFound {
            namespace: "ns".into(),
            name: "p".into(),
        })
    }

    fn terminal() -> Outcome {
        Outcome::Failed(Failure::PodBoundElsewhere {
            name: "p".into(),
            node: "other".into(),
        })
    }

    #[test]
    fn status_table() {
        // (backoffLimit, current phase, current attempts, outcome, want phase, want attempts)
        let cases = [
            (None, None, None, Outcome::Bound, "Succeeded", 0),
            (
                None,
                Some("Pending"),
                Some(2),
                Outcome::Bound,
                "Succeeded",
                2,
            ),
            (None, None, None, Outcome::AlreadyBound, "Succeeded", 0),
            (None, None, None, retryable(), "Pending", 1),
            (None, Some("Pending"), Some(1), retryable(), "Pending", 2),
            // default limit 3 reached
            (None, Some("Pending"), Some(2), retryable(), "Failed", 3),
            (Some(5), Some("Pending"), Some(3), retryable(), "Pending", 4),
            (Some(5), Some("Pending"), Some(4), retryable(), "Failed", 5),
            (Some(1), None, None, retryable(), "Failed", 1),
            // terminal: Failed at once; with a backoffLimit the count reaches it
            (None, None, None, terminal(), "Failed", 1),
            (Some(4), None, None, terminal(), "Failed", 4),
            (Some(4), Some("Pending"), Some(6), terminal(), "Failed", 7),
        ];
        for (i, (limit, phase, attempts, outcome, want_phase, want_attempts)) in
            cases.into_iter().enumerate()
        {
            let s = next_status(&br(limit, phase, attempts), &outcome, 3, "n1", None);
            assert_eq!(s.phase.as_deref(), Some(want_phase), "case {i}");
            assert_eq!(s.failed_attempts, Some(want_attempts), "case {i}");
            assert!(s.reason.is_some_and(|r| !r.is_empty()), "case {i}");
        }
    }

    #[test]
    fn gave_up_reason_names_the_cause() {
        let s = next_status(
            &br(None, Some("Pending"), Some(2)),
            &retryable(),
            3,
            "n1",
            None,
        );
        let reason = s.reason.unwrap_or_default();
        assert!(reason.contains("pod ns/p not found"), "{reason}");
        assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    }

    #[test]
    fn settled_table() {
        let cases = [
            (None, None, None, false),
            (None, Some("Pending"), Some(2), false),
            (None, Some("Succeeded"), None, true),
            (None, Some("Failed"), Some(1), true),
            (Some(3), Some("Failed"), Some(1), false),
            (Some(3), Some("Failed"), Some(3), true),
            (None, Some("Bogus"), None, false),
        ];
        for (i, (limit, phase, attempts, want)) in cases.into_iter().enumerate() {
            assert_eq!(is_settled(&br(limit, phase, attempts), 3), want, "case {i}");
        }
    }
}
