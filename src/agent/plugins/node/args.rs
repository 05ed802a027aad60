//! The `node` plugin's memory-check flags.

use super::*;

/// Flags of the optional memory check.
#[derive(Args, Debug, Clone)]
pub struct MemoryArgs {
    /// Node memory check (available memory >= the pod's memory requests + reserve): enforce, warn or off.
    #[arg(long, env = "BINDLET_MEMORY_CHECK", value_enum, default_value_t = CheckMode::Off)]
    pub memory_check: CheckMode,
    /// Memory kept free beyond the pod's requests by `--memory-check`, e.g. 1Gi or 512Mi.
    #[arg(long, env = "BINDLET_MEMORY_RESERVE", default_value = "1Gi", value_parser = parse_reserve)]
    pub memory_reserve: u64,
}

pub(super) fn parse_reserve(s: &str) -> Result<u64, String> {
    parse_bytes(s).ok_or_else(|| format!("invalid quantity \"{s}\": expected e.g. 1Gi or 512Mi"))
}

impl Default for MemoryArgs {
    /// The flags' own defaults (written once, in the `#[arg]`s above).
    fn default() -> Self {
        crate::flags::defaults()
    }
}
