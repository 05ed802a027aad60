//! Where the memory check reads available memory: this machine, or a test's value.

use super::*;

/// Where the node's available memory comes from; faked in tests.
pub trait MemoryProbe: Send + Sync {
    /// Bytes available now; None when it cannot be read.
    fn available_bytes(&self) -> Option<u64>;
}

impl MemoryProbe for SystemProbe {
    fn available_bytes(&self) -> Option<u64> {
        sysinfo::IS_SUPPORTED_SYSTEM.then(|| self.memory_available())
    }
}
