//! `gpu`: the node's GPUs can serve the request, checked on the node right before binding.
//!
//! `validate` cross-checks the request with the pod (pure). `pre_bind` takes a fresh
//! probe of the GPUs and lists the pods already bound to this node (only for requests
//! that ask for GPUs, so a plain bind costs no extra API request), then applies the pure
//! verdicts of [`crate::gpu::verdict`]. GPU binds on one node are serialized from the
//! probe until the bind is done, so two binds cannot both count the same free GPU.

mod args;
mod runtime;
mod state;

pub use args::*;
pub use runtime::*;
pub use state::*;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, ListParams};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_util::sync::CancellationToken;

use crate::api::{Verdict, VerdictOutcome};
use crate::binding::decide::GpuRequest;
use crate::binding::{BindContext, BindState, Plugin, PluginError, verdict};
use crate::gpu::podresources::{self, PodResources};
use crate::gpu::verdict::{self as gv, PLUGIN};
use crate::gpu::{GpuArgs, GpuInventory, GpuSnapshot, Transition};
use crate::kubeapi::events::{EventSink, EventSpec, EventType};

use super::CheckMode;

pub struct GpuPlugin {
    mode: CheckMode,
    runtime: Option<Arc<GpuRuntime>>,
}

/// The `gpu` plugin over the shared GPU runtime (`None`: GPU checks are off).
pub fn setup(settings: &GpuSettings, env: &super::PluginEnv) -> GpuPlugin {
    GpuPlugin {
        mode: settings.args.gpu_verification,
        runtime: env.gpu.clone(),
    }
}

#[async_trait::async_trait]
impl Plugin for GpuPlugin {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn validate(&self, ctx: &BindContext<'_>) -> Vec<Verdict> {
        let mut out = gv::request_verdicts(&ctx.request.gpu, ctx.pod, self.mode);
        if ctx.bind_request.spec.received_resource_type.as_deref() == Some("MigInstance") {
            out.push(verdict(
                PLUGIN,
                "mig",
                VerdictOutcome::Skip,
                "MIG instances are not verified on the node; the device plugin assigns them".into(),
            ));
        }
        out
    }

    async fn pre_bind(
        &self,
        ctx: &BindContext<'_>,
        state: &mut BindState,
    ) -> Result<Vec<Verdict>, PluginError> {
        // Fractions are checked by `gpu_sharing`, once it knows the group's GPU.
        if matches!(
            ctx.request.gpu,
            GpuRequest::None | GpuRequest::Fraction { .. }
        ) {
            return Ok(Vec::new());
        }
        if self.mode == CheckMode::Off {
            return Ok(vec![verdict(
                PLUGIN,
                "gpu",
                VerdictOutcome::Skip,
                "GPU verification is off".into(),
            )]);
        }
        let Some(rt) = &self.runtime else {
            let bad = if self.mode == CheckMode::Warn {
                VerdictOutcome::Warn
            } else {
                VerdictOutcome::Fail
            };
            return Ok(vec![verdict(
                PLUGIN,
                "inventory",
                bad,
                "GPU inventory unavailable: no GPU backend is running".into(),
            )]);
        };
        let guard = rt.bind_lock.clone().lock_owned().await;
        let snap = rt.snapshot().await;
        let holders = rt.holders(&ctx.request.gpu).await?;
        let verdicts = gv::inventory_verdicts(&ctx.request.gpu, &snap, &holders, self.mode);
        let request = format!("{}/{}", ctx.request.namespace, ctx.request.pod_name);
        rt.record(request, &verdicts);
        let failed: Vec<&Verdict> = verdicts
            .iter()
            .filter(|v| v.outcome == VerdictOutcome::Fail)
            .collect();
        if let Some(tx) = &rt.notices {
            let ok = failed.is_empty();
            let shown: Vec<&Verdict> = if ok {
                verdicts.iter().collect()
            } else {
                failed
            };
            let message = shown
                .iter()
                .map(|v| v.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let _ = tx.send(GpuNotice::Verdict {
                pod: crate::api::refs::object_ref(ctx.pod),
                ok,
                message,
            });
        }
        state.put(GpuBindState {
            snapshot: Some(snap),
            verdicts: verdicts.clone(),
            guard: Some(guard),
        });
        Ok(verdicts)
    }

    async fn rollback(&self, _ctx: &BindContext<'_>, state: &mut BindState) {
        // Nothing was written; releasing the lock lets the next GPU bind probe.
        if let Some(s) = state.get_mut::<GpuBindState>() {
            s.guard = None;
        }
    }
}
