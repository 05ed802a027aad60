//! Manual placement from the command line: `bindlet bind` (checked binding, through the node's
//! agent or directly) and `bindlet explain` (what happened to a BindRequest or pod).
//!
//! Decisions are pure (`checks`, `request`, `render`); `ops` is the thin layer that reads
//! snapshots and writes, every call under a timeout.

pub mod checks;
pub mod cli;
pub mod ops;
pub use crate::api::quantity;
pub mod render;
pub mod request;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use thiserror::Error;

use crate::api::duration::parse_duration;
use crate::kubeapi::ApiError;

pub use ops::{BindOutcome, bind, explain};

/// Exit status of `bindlet bind`: everything done, or a dry run whose checks passed.
pub const EXIT_DONE: i32 = 0;
/// Usage, connection or API errors.
pub const EXIT_ERROR: i32 = 1;
/// Refused by the checks (nothing was written), or an existing BindRequest stands in the way.
pub const EXIT_REFUSED: i32 = 2;
/// The bind was attempted and failed (the agent gave up, or the API server rejected it).
pub const EXIT_FAILED: i32 = 3;
/// The BindRequest was written but did not settle within `--wait`.
pub const EXIT_PENDING: i32 = 4;

const EXIT_CODES_HELP: &str = "Exit status: 0 bound (or already bound there; a dry run whose checks passed), \
2 refused by the checks (nothing written) or another BindRequest for the pod exists, \
3 the bind failed (the agent gave up or the API server rejected it), \
4 the BindRequest did not settle within --wait, 1 usage or connection error.";

/// Cluster access shared by `bind` and `explain`.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Path to a kubeconfig; default: KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, env = "BINDLET_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, env = "BINDLET_CONTEXT")]
    pub context: Option<String>,
    /// Namespace of the pod (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Timeout of every API call.
    #[arg(long, env = "BINDLET_API_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub api_timeout: Duration,
}

/// `bindlet bind POD --node NODE`.
#[derive(Args, Debug, Clone)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct BindArgs {
    /// The pod to place.
    pub pod: String,
    /// The node to place it on.
    #[arg(long)]
    pub node: String,
    /// Only run the checks; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Post the Binding directly after the checks instead of writing a BindRequest for the
    /// node's agent (for clusters without bindlet agents: GPUs, volumes and claims are then
    /// not verified on the node).
    #[arg(long)]
    pub direct: bool,
    /// How long to follow the BindRequest until it settles.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub wait: Duration,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `bindlet explain NAME`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Exit status: 0 explained, 1 neither a BindRequest nor a pod of that name exists, or a connection error."
)]
pub struct ExplainArgs {
    /// A BindRequest, or the pod it is for (they share the name).
    pub name: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Error)]
pub enum ManualError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: ApiError,
    },
    #[error("no BindRequest or pod named {name} in namespace {namespace}")]
    NothingToExplain { namespace: String, name: String },
    #[error("binding: {0}")]
    Transient(String),
    #[error("cannot build the BindRequest: {0}")]
    Build(String),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl ManualError {
    pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(ApiError) -> ManualError {
        let what = what.into();
        move |source| ManualError::Api { what, source }
    }
}
