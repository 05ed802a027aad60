//! Command-line glue for `bind` and `explain`: connect, run, print, map to an exit status.

use std::io::Write;

use super::{BindArgs, EXIT_DONE, EXIT_ERROR, ExplainArgs, ManualError};

async fn client(c: &super::ClusterArgs) -> anyhow::Result<kube::Client> {
    crate::cli::kube_client(c.kubeconfig.as_deref(), c.context.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the cluster: {e}"))
}

fn finish(res: Result<i32, ManualError>) -> anyhow::Result<i32> {
    let _ = std::io::stdout().flush();
    match res {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(EXIT_ERROR)
        }
    }
}

/// `bindlet bind`; returns the exit status.
pub async fn bind(args: BindArgs) -> anyhow::Result<i32> {
    let client = client(&args.cluster).await?;
    let mut out = std::io::stdout();
    finish(
        super::bind(&client, &args, &mut out)
            .await
            .map(|o| o.exit_code()),
    )
}

/// `bindlet explain`; returns the exit status.
pub async fn explain(args: ExplainArgs) -> anyhow::Result<i32> {
    let client = client(&args.cluster).await?;
    let mut out = std::io::stdout();
    finish(
        super::explain(&client, &args, &mut out)
            .await
            .map(|()| EXIT_DONE),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn parses_bind_and_explain() {
        let cli = Cli::try_parse_from([
            "bindlet",
            "bind",
            "web",
            "--node",
            "n1",
            "-n",
            "team",
            "--dry-run",
            "--wait",
            "5s",
        ])
        .expect("parse bind");
        let Command::Bind(a) = cli.command else {
            panic!("not bind")
        };
        assert_eq!((a.pod.as_str(), a.node.as_str()), ("web", "n1"));
        assert_eq!(a.cluster.namespace.as_deref(), Some("team"));
        assert!(a.dry_run && !a.direct);
        assert_eq!(a.wait, std::time::Duration::from_secs(5));
        assert!(
            Cli::try_parse_from(["bindlet", "bind", "web"]).is_err(),
            "--node is required"
        );

        let cli = Cli::try_parse_from(["bindlet", "explain", "web"]).expect("parse explain");
        let Command::Explain(a) = cli.command else {
            panic!("not explain")
        };
        assert_eq!(a.name, "web");
        assert_eq!(a.cluster.namespace, None);
    }
}
