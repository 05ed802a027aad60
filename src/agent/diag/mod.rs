//! Node diagnostics: an HTTP server with `/livez`, `/readyz`, `/metrics` (OpenMetrics),
//! `/debug/state` (JSON) and `/debug` (a page for people), fed by the agent's
//! [`Recorder`]. `/livez` and `/readyz` are always open; `/metrics` and `/debug*` may
//! require a Kubernetes bearer token (`--diag-auth=kubernetes`). TLS when given a
//! certificate and key. Stops with the agent's shutdown token.

mod auth;
pub mod facts;
mod html;
pub mod metrics;
mod recorder;
mod server;
pub mod system;
mod waits;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use thiserror::Error;

pub use auth::Decision;
pub use facts::{GpuDevice, GpuFacts, NodeFacts, VolumeFact, VolumeFacts};
pub use recorder::{
    AgentIdentity, AgentView, AttemptRecord, AttemptTimer, DEFAULT_HISTORY, DebugState, LeaseView,
    QueueView, Readiness, Recorder, RequestRecord, StageRecord, Totals, VerdictRecord,
};
pub use server::{DiagServer, start};
pub use system::{NodeResources, ProcessFacts, SystemProbe};
pub use waits::{PermissionCheck, WaitRecord};

/// Default listen address of `bindlet run`.
pub const DEFAULT_ADDR: &str = "0.0.0.0:9464";

/// Who may read `/metrics` and `/debug*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Anyone who can reach the port.
    None,
    /// A bearer token accepted by TokenReview whose user a SubjectAccessReview allows
    /// `get` on the path.
    Kubernetes,
}

/// Diagnostics flags, shared by `run` and `demo`.
#[derive(Args, Debug, Clone)]
pub struct DiagArgs {
    /// Diagnostics listen address; `off` disables the server. Default: 0.0.0.0:9464 for
    /// `run`, a free loopback port for `demo`.
    #[arg(long, env = "BINDLET_DIAG_ADDR")]
    pub diag_addr: Option<String>,
    /// Access control for /metrics and /debug*: none or kubernetes (TokenReview + SubjectAccessReview).
    #[arg(long, env = "BINDLET_DIAG_AUTH", value_enum, default_value_t = AuthMode::None)]
    pub diag_auth: AuthMode,
    /// PEM certificate (chain) for serving diagnostics over TLS.
    #[arg(long, env = "BINDLET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "BINDLET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// BindRequests kept in the /debug timeline.
    #[arg(long, env = "BINDLET_DIAG_HISTORY", default_value_t = DEFAULT_HISTORY)]
    pub diag_history: usize,
}

impl DiagArgs {
    /// The server's configuration; `None` when disabled with `off`.
    pub fn to_config(
        &self,
        default_addr: &str,
        api_timeout: Duration,
    ) -> Result<Option<DiagConfig>, DiagError> {
        let text = self.diag_addr.as_deref().unwrap_or(default_addr).trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let addr = text
            .parse()
            .map_err(|e| DiagError::Config(format!("--diag-addr \"{text}\": {e}")))?;
        Ok(Some(DiagConfig {
            addr,
            auth: self.diag_auth,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(c), Some(k)) => Some(TlsFiles {
                    cert: c.clone(),
                    key: k.clone(),
                }),
                (None, None) => None,
                _ => {
                    return Err(DiagError::Config(
                        "--tls-cert and --tls-key go together".into(),
                    ));
                }
            },
            api_timeout,
        }))
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct DiagConfig {
    pub addr: SocketAddr,
    pub auth: AuthMode,
    pub tls: Option<TlsFiles>,
    /// Timeout of the TokenReview and SubjectAccessReview calls.
    pub api_timeout: Duration,
}

impl DiagConfig {
    /// Open endpoints, plain HTTP, on `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        DiagConfig {
            addr,
            auth: AuthMode::None,
            tls: None,
            api_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Error)]
pub enum DiagError {
    #[error("invalid diagnostics configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load TLS certificate or key: {0}")]
    Tls(String),
}
