//! Pure binding logic: request validation, pod checks, the plugin pipeline, KAI status
//! semantics and the retry policy. Nothing here talks to the API server directly.

mod check_mode;
pub mod decide;
pub mod failure;
pub mod pipeline;
pub mod pod_metadata;
pub mod status;

pub use crate::api::Backoff;
pub use check_mode::CheckMode;
pub use decide::{
    GpuRequest, PodState, ValidRequest, check_pod, selected_elsewhere, validate_request,
};
pub use failure::Failure;
pub use pipeline::{
    AttemptError, BindContext, BindFault, BindState, Binder, Park, ParkedOn, PipelineReport,
    Plugin, PluginError, PluginErrorKind, Registry, verdict,
};
pub use status::{Outcome, backoff_limit, is_settled, next_status};
