//! Why an attempt did not bind: typed, each with a stable code (metrics, Event reasons)
//! and a human-readable text (BindRequest `status.reason`, logs, Event notes).

use thiserror::Error;

use super::pipeline::PluginErrorKind;

/// A refusal or failure of one attempt. Transient infrastructure errors (API server
/// unreachable, 5xx, timeouts) are not `Failure`s: they say nothing about the request
/// and are retried without counting an attempt (see `agent::effects::ApiError`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Failure {
    #[error("malformed BindRequest: {0}")]
    Malformed(String),
    #[error("BindRequest selects node \"{selected}\" but this agent serves node \"{me}\"")]
    WrongNode { selected: String, me: String },
    #[error("pod {namespace}/{name} not found")]
    PodNotFound { namespace: String, name: String },
    #[error(
        "pod {name} was recreated: the request was made for uid {expected}, the live pod has uid {live}"
    )]
    PodUidMismatch {
        name: String,
        expected: String,
        live: String,
    },
    #[error("pod {name} is already bound to another node \"{node}\"")]
    PodBoundElsewhere { name: String, node: String },
    #[error("pod {name} is being deleted")]
    PodTerminating { name: String },
    #[error("node \"{0}\" is not known to the API server")]
    NodeNotFound(String),
    #[error("{plugin}: {message}")]
    Refused {
        plugin: String,
        check: String,
        message: String,
    },
    #[error("pre-bind step {plugin} failed: {message}")]
    PreBindFailed {
        plugin: String,
        /// The plugin's own code for why (see [`PluginErrorKind`]).
        kind: PluginErrorKind,
        message: String,
    },
    #[error("the API server rejected the binding: {0}")]
    BindingRejected(String),
}

impl Failure {
    /// Stable CamelCase code, used as Event reason and metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Malformed(_) => "MalformedRequest",
            Failure::WrongNode { .. } => "WrongNode",
            Failure::PodNotFound { .. } => "PodNotFound",
            Failure::PodUidMismatch { .. } => "PodUIDMismatch",
            Failure::PodBoundElsewhere { .. } => "PodBoundElsewhere",
            Failure::PodTerminating { .. } => "PodTerminating",
            Failure::NodeNotFound(_) => "NodeNotFound",
            Failure::Refused { .. } => "NodeRefused",
            Failure::PreBindFailed { .. } => "PreBindFailed",
            Failure::BindingRejected(_) => "BindingRejected",
        }
    }

    /// The finer code beneath [`Self::code`]: the plugin's own, for a failed pre-bind step.
    pub fn detail_code(&self) -> Option<&'static str> {
        match self {
            Failure::PreBindFailed { kind, .. } => Some(kind.code()),
            _ => None,
        }
    }

    /// Terminal failures cannot succeed by retrying: the request is marked `Failed` at once.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Failure::Malformed(_)
                | Failure::WrongNode { .. }
                | Failure::PodUidMismatch { .. }
                | Failure::PodBoundElsewhere { .. }
                | Failure::PodTerminating { .. }
        )
    }
}
