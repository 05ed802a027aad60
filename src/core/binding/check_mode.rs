//! How strictly a family of checks is applied (one flag per family: enforce, warn, off).

/// How strictly a family of checks is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CheckMode {
    /// A failed check refuses the bind.
    #[default]
    Enforce,
    /// A failed check is recorded as a warning; the bind goes on.
    Warn,
    /// The checks are skipped.
    Off,
}
