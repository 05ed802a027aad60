//! The `numa` plugin's flags and settings.

use super::*;

/// The `numa` plugin's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NumaArgs {
    /// Check of the scheduler's predicted NUMA placement (spec.predictedNUMAZones) against this node's topology: enforce, warn or off.
    #[arg(long, env = "BINDLET_NUMA_CHECKS", value_enum, default_value_t = CheckMode::Enforce)]
    pub numa_checks: CheckMode,
    /// Where the host's sysfs is mounted (NUMA nodes, PCI devices).
    #[arg(long, env = "BINDLET_SYSFS_ROOT", default_value = "/sys")]
    pub sysfs_root: PathBuf,
    /// Publish each pod's observed NUMA placement (annotation kai.scheduler/numa-placement-observed), read from the kubelet's pod-resources socket, as KAI's NUMA placement exporter does. Needs --kubelet-pod-resources-socket.
    #[arg(long, env = "BINDLET_PUBLISH_NUMA_PLACEMENT")]
    pub publish_numa_placement: bool,
    /// How often the kubelet's pod-resources socket is read for --publish-numa-placement.
    #[arg(long, env = "BINDLET_NUMA_PLACEMENT_PERIOD", default_value = "1s", value_parser = crate::api::duration::parse_duration)]
    pub numa_placement_period: Duration,
}

impl Default for NumaArgs {
    /// The flags' own defaults (written once, in the `#[arg]`s above).
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// The plugin's settings: its flags.
#[derive(Debug, Clone, Default)]
pub struct NumaSettings {
    pub args: NumaArgs,
}
