//! The `dra` plugin's flags and settings.

use super::*;

/// Command-line flags of the dra plugin (flattened into the agent's flags).
#[derive(clap::Args, Debug, Clone)]
pub struct DraArgs {
    /// How long a pod may wait for its devices' DRA binding conditions, counted from the
    /// allocation's timestamp (kube-scheduler's bindingTimeout).
    #[arg(long, env = "BINDLET_DRA_BINDING_TIMEOUT", default_value = "600s", value_parser = crate::api::duration::parse_duration)]
    pub dra_binding_timeout: Duration,
}

impl Default for DraArgs {
    /// The flags' own defaults (written once, in the `#[arg]`s above).
    fn default() -> Self {
        crate::flags::defaults()
    }
}

/// Settings of the dra plugin: its flags.
#[derive(Debug, Clone, Default)]
pub struct DraSettings {
    pub args: DraArgs,
}
