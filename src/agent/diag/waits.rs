//! What `/debug/state`, `/readyz` and the metrics show about two things the agent waits
//! on: DRA binding conditions (requests parked until a driver reports its devices ready)
//! and the permission self-check made at start.

use std::time::Instant;

use serde::Serialize;

/// A request parked until a claim's binding conditions are met.
#[derive(Debug, Clone, Serialize)]
pub struct WaitRecord {
    pub namespace: String,
    pub name: String,
    /// The claims whose change wakes it (`namespace/name`).
    pub claims: Vec<String>,
    /// What it waits for (the claims and the conditions not True yet).
    pub waiting_for: String,
    /// When this agent first parked it (RFC 3339).
    pub since: String,
    pub seconds: f64,
    /// The longest it may still wait, as of the last attempt.
    pub remaining_seconds: f64,
    #[serde(skip)]
    pub(crate) started: Option<Instant>,
}

/// The agent's permission self-check (SelfSubjectAccessReview per API call it makes).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PermissionCheck {
    /// Not done yet: the agent is not ready until it is.
    #[default]
    Checking,
    /// Every call is allowed, or these are missing (`verb group/resource`).
    Checked { missing: Vec<String> },
    /// The reviews could not be made (e.g. no answer); the agent does not wait on it.
    Unknown { error: String },
}

impl PermissionCheck {
    /// The short word `/debug/state` and `/readyz` use.
    pub fn word(&self) -> &'static str {
        match self {
            PermissionCheck::Checking => "checking",
            PermissionCheck::Checked { missing } if missing.is_empty() => "ok",
            PermissionCheck::Checked { .. } => "missing",
            PermissionCheck::Unknown { .. } => "unknown",
        }
    }

    /// Whether readiness may be granted: checked with nothing missing, or not checkable.
    pub fn allows_ready(&self) -> bool {
        matches!(self.word(), "ok" | "unknown")
    }

    pub fn missing(&self) -> &[String] {
        match self {
            PermissionCheck::Checked { missing } => missing,
            _ => &[],
        }
    }
}
