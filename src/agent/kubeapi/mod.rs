//! The one way bindlet talks to the API server: every call has a timeout, its error is
//! classified ([`ApiError`]), and it is counted by a [`CallObserver`] (the diagnostics
//! metrics) under one entry of [`calls`], the list RBAC is checked against. The agent, the
//! plugins and the diagnostics server's own reviews all go through here; this module sits
//! below all of them and imports none.

pub mod calls;
pub mod events;

use std::sync::Arc;
use std::time::Duration;

use kube::{Client, Error as KubeError};
use thiserror::Error;

pub use calls::ApiCall;

/// What every piece of code that talks to the server holds: the client, the agent's
/// per-call timeout and the observer that counts each call. One type instead of a
/// `{client, timeout, recorder}` triple per plugin.
#[derive(Clone)]
pub struct Kube {
    pub client: Client,
    pub timeout: Duration,
    pub observer: Arc<dyn CallObserver>,
}

impl Kube {
    pub fn new(client: Client, timeout: Duration, observer: Arc<dyn CallObserver>) -> Self {
        Kube {
            client,
            timeout,
            observer,
        }
    }

    /// [`call_as`] with this handle's timeout and observer.
    pub async fn call<T>(
        &self,
        what: ApiCall,
        fut: impl std::future::Future<Output = Result<T, KubeError>>,
    ) -> Result<T, ApiError> {
        call_as(&*self.observer, what, self.timeout, fut).await
    }

    /// [`call_opt_as`] with this handle's timeout and observer.
    pub async fn call_opt<T>(
        &self,
        what: ApiCall,
        fut: impl std::future::Future<Output = Result<Option<T>, KubeError>>,
    ) -> Result<Option<T>, ApiError> {
        call_opt_as(&*self.observer, what, self.timeout, fut).await
    }
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why no client could be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error(transparent)]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error(transparent)]
    Infer(#[from] kube::config::InferConfigError),
    #[error(transparent)]
    Client(#[from] KubeError),
}

/// A client from `kubeconfig` (else KUBECONFIG, ~/.kube/config, then in-cluster), optionally
/// with another `context`. Shared by `run`, `bind`, `explain` and `bench --kubeconfig`.
pub async fn connect(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<Client, ConnectError> {
    let opts = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &opts).await?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&opts).await?,
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Counts API calls (the diagnostics recorder implements it).
pub trait CallObserver: Send + Sync {
    /// A call answered `Ok`, or failed with `Err`.
    fn api_request(&self, what: ApiCall, result: Result<(), &ApiError>);
    /// A `get_opt` call: `Ok(false)` was a 404 answer.
    fn api_request_opt(&self, what: ApiCall, result: Result<bool, &ApiError>);
}

impl<T: CallObserver + ?Sized> CallObserver for Arc<T> {
    fn api_request(&self, what: ApiCall, result: Result<(), &ApiError>) {
        (**self).api_request(what, result)
    }
    fn api_request_opt(&self, what: ApiCall, result: Result<bool, &ApiError>) {
        (**self).api_request_opt(what, result)
    }
}

/// Counts nothing: for callers without diagnostics.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl CallObserver for NoObserver {
    fn api_request(&self, _: ApiCall, _: Result<(), &ApiError>) {}
    fn api_request_opt(&self, _: ApiCall, _: Result<bool, &ApiError>) {}
}

/// An API call that did not produce an answer about the request.
#[derive(Debug, Clone, Error)]
pub enum ApiError {
    #[error("API request timed out after {0:?}")]
    Timeout(Duration),
    #[error("API server answered {code} {reason}: {message}")]
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("API server unreachable: {0}")]
    Transport(String),
    #[error("cannot decode the API server's answer: {0}")]
    Decode(String),
}

impl ApiError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// An answer that sending the same write again cannot change: the request is malformed
    /// (400), forbidden by RBAC (403), or refused by admission or validation (422: what a
    /// ValidatingAdmissionPolicy denial answers). Retrying it is a storm, not a retry.
    pub fn is_refusal(&self) -> bool {
        matches!(self.code(), Some(400 | 403 | 422))
    }
}

fn classify(e: KubeError) -> ApiError {
    match e {
        KubeError::Api(s) => ApiError::Status {
            code: s.code,
            reason: s.reason.clone(),
            message: s.message.clone(),
        },
        KubeError::SerdeError(e) => ApiError::Decode(e.to_string()),
        other => ApiError::Transport(other.to_string()),
    }
}

/// Runs one API call under the agent's timeout.
pub async fn call<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, KubeError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(ApiError::Timeout(timeout)),
    }
}

/// [`call`], counted by `diag` (the diagnostics metrics) by verb, resource and status code.
pub async fn call_as<T, O: CallObserver + ?Sized>(
    diag: &O,
    what: ApiCall,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, KubeError>>,
) -> Result<T, ApiError> {
    let r = call(timeout, fut).await;
    diag.api_request(what, r.as_ref().map(|_| ()));
    r
}

/// [`call_as`] for `get_opt`, which turns a 404 answer into `Ok(None)`.
pub async fn call_opt_as<T, O: CallObserver + ?Sized>(
    diag: &O,
    what: ApiCall,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<Option<T>, KubeError>>,
) -> Result<Option<T>, ApiError> {
    let r = call(timeout, fut).await;
    diag.api_request_opt(what, r.as_ref().map(Option::is_some));
    r
}

/// Sends a request whose answer the caller does not need: a non-2xx answer is still an
/// error (kube's `Error::Api`, as `Api` methods give), but a 2xx body is left undecoded.
pub async fn send_unread(
    client: &Client,
    request: Result<http::Request<Vec<u8>>, KubeError>,
) -> Result<(), KubeError> {
    client.request_text(request?).await.map(drop)
}
