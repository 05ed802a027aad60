//! The zero-configuration demo, small: every request must reach its expected outcome.

use bindlet::cli::{Cli, Command};
use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_reaches_every_expected_outcome() {
    let cli = Cli::try_parse_from(["bindlet", "demo", "--pods", "60", "--retry-base", "100ms"])
        .expect("args");
    let Command::Demo(args) = cli.command else {
        panic!("not the demo command");
    };
    let ok = bindlet::demo::run(args).await.expect("demo runs");
    assert!(
        ok,
        "the demo reported requests that did not reach their expected outcome"
    );
}
