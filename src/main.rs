// Cluster input, files and NVML must never panic the agent: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

fn main() -> anyhow::Result<()> {
    bindlet::cli::main()
}
