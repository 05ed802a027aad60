//! Command-line glue for `bind` and `explain`: connect, run, print, map to an exit status.

use std::io::Write;

use super::{BindArgs, EXIT_DONE, EXIT_ERROR, ExplainArgs, ManualError};

async fn client(c: &super::ClusterArgs) -> anyhow::Result<kube::Client> {
    crate::kubeapi::connect(c.kubeconfig.as_deref(), c.context.as_deref())
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
