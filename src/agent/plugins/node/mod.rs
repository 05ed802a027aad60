//! `node`: the node accepts the pod — not cordoned, and every NoSchedule/NoExecute taint
//! tolerated (the same rules as kube-scheduler's TaintToleration and NodeUnschedulable).
//! Optionally (`--memory-check`), the node has the memory the pod requests plus a reserve
//! available right now: the scheduler counts requests against allocatable, not what is
//! actually free, so a node squeezed by unaccounted use passes its check.

mod args;
mod probe;

pub use args::*;
pub use probe::*;

use std::sync::Arc;

use clap::Args;

use crate::api::Verdict;
use crate::binding::{BindContext, BindState, Plugin, PluginError};
use crate::diag::SystemProbe;
pub use crate::node::{memory_verdict, node_verdicts, pod_memory_request, tolerates};
use crate::volume::quantity::parse_bytes;

use super::CheckMode;

const NAME: &str = "node";

pub struct NodePlugin {
    mode: CheckMode,
    memory: MemoryArgs,
    probe: Arc<dyn MemoryProbe>,
}

/// The `node` plugin: `--node-checks`, and the memory check as `--memory-check` sets it,
/// reading this machine's available memory.
pub fn setup(mode: CheckMode, memory: &MemoryArgs) -> NodePlugin {
    NodePlugin {
        mode,
        memory: memory.clone(),
        probe: Arc::new(SystemProbe::own()),
    }
}

impl NodePlugin {
    /// Reads available memory from `probe` instead of the node.
    pub fn with_memory_probe(mut self, probe: Arc<dyn MemoryProbe>) -> Self {
        self.probe = probe;
        self
    }
}

#[async_trait::async_trait]
impl Plugin for NodePlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate(&self, ctx: &BindContext<'_>) -> Vec<Verdict> {
        let tolerations = ctx
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or(&[]);
        node_verdicts(ctx.node, tolerations, self.mode)
    }

    /// The memory check reads the node's memory now (an effect), so it runs here, before
    /// any other plugin writes anything.
    async fn pre_bind(
        &self,
        ctx: &BindContext<'_>,
        _state: &mut BindState,
    ) -> Result<Vec<Verdict>, PluginError> {
        if self.memory.memory_check == CheckMode::Off {
            return Ok(Vec::new());
        }
        let requested = pod_memory_request(ctx.pod);
        let probe = self.probe.clone();
        // /proc/meminfo is a file read: keep it off the agent's only runtime thread.
        let available = tokio::task::spawn_blocking(move || probe.available_bytes())
            .await
            .ok()
            .flatten();
        Ok(memory_verdict(
            requested,
            available,
            self.memory.memory_reserve,
            self.memory.memory_check,
        )
        .into_iter()
        .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_flags_parse() {
        assert_eq!(parse_reserve("512Mi"), Ok(512 << 20));
        assert!(parse_reserve("plenty").is_err());
        let d = MemoryArgs::default();
        assert_eq!(
            (d.memory_check, d.memory_reserve),
            (CheckMode::Off, 1 << 30)
        );
    }
}
