//! The `volumes` plugin's flags and settings.

use super::*;

/// Command-line flags of the volumes plugin (flattened into the agent's flags).
#[derive(clap::Args, Debug, Clone)]
pub struct VolumeArgs {
    /// Local volume checks (paths, free space, inodes, hostPath types): enforce, warn or
    /// off. Claim binding happens in every mode.
    #[arg(long, env = "BINDLET_VOLUME_CHECKS", value_enum, default_value_t = CheckMode::Enforce)]
    pub volume_checks: CheckMode,
    /// How long to wait for a dynamically provisioned WaitForFirstConsumer claim to be bound.
    #[arg(long, env = "BINDLET_VOLUME_BINDING_TIMEOUT", default_value = "120s", value_parser = crate::api::duration::parse_duration)]
    pub volume_binding_timeout: Duration,
    /// Where the node's root filesystem is visible to the agent (e.g. /host in a DaemonSet
    /// that mounts the host's / there); PV and hostPath paths are looked up below it.
    #[arg(long, env = "BINDLET_VOLUME_HOST_ROOT", default_value = "/")]
    pub volume_host_root: PathBuf,
}

impl Default for VolumeArgs {
    /// The flags' own defaults (written once, in the `#[arg]`s above).
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// Settings of the volumes plugin: its flags.
#[derive(Debug, Clone, Default)]
pub struct VolumeSettings {
    pub args: VolumeArgs,
}
