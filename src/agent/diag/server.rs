//! The HTTP server: routing, access control, TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::recorder::AgentView;

use super::auth::{Decision, KubeAuth};
use super::{AuthMode, DiagConfig, DiagError, TlsFiles};

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Slow or idle clients must not hold connections forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running diagnostics server.
pub struct DiagServer {
    addr: SocketAddr,
    tls: bool,
    task: JoinHandle<()>,
}

impl DiagServer {
    /// The bound address (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr` or `https://addr`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Waits until the server has stopped (after its shutdown token fired).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

struct Ctx {
    stats: Arc<dyn AgentView>,
    auth: Option<KubeAuth>,
}

/// Binds `cfg.addr` and serves until `shutdown` fires. `client` is needed for
/// `--diag-auth=kubernetes`.
pub async fn start(
    cfg: DiagConfig,
    stats: Arc<dyn AgentView>,
    client: Option<kube::Client>,
    shutdown: CancellationToken,
) -> Result<DiagServer, DiagError> {
    let auth = match cfg.auth {
        AuthMode::None => None,
        AuthMode::Kubernetes => {
            let client = client.ok_or_else(|| {
                DiagError::Config("--diag-auth=kubernetes needs an API client".into())
            })?;
            Some(KubeAuth::new(
                client,
                cfg.api_timeout,
                stats.recorder().clone(),
            ))
        }
    };
    let tls = cfg.tls.as_ref().map(load_tls).transpose()?;
    let listener = TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| DiagError::Listen {
            addr: cfg.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DiagError::Listen {
        addr: cfg.addr,
        source,
    })?;
    let ctx = Arc::new(Ctx { stats, auth });
    let is_tls = tls.is_some();
    let task = tokio::spawn(accept_loop(listener, ctx, tls, shutdown));
    Ok(DiagServer {
        addr,
        tls: is_tls,
        task,
    })
}

fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, DiagError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| DiagError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(DiagError::Tls(format!(
            "{}: no certificate found",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| DiagError::Tls(format!("{}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DiagError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| DiagError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(error = %e, "diagnostics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (ctx, tls, stop) = (ctx.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_conn(stream, ctx, stop).await,
                Some(acceptor) => {
                    let hs = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    match hs.await {
                        Ok(Ok(s)) => serve_conn(s, ctx, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "diagnostics TLS handshake failed")
                        }
                        Err(_) => tracing::debug!("diagnostics TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_conn<S>(stream: S, ctx: Arc<Ctx>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            // Let a request being answered finish, then close.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

fn response(
    code: StatusCode,
    ctype: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let known = matches!(
        path.as_str(),
        "/livez" | "/readyz" | "/metrics" | "/debug" | "/debug/state"
    );
    if !known {
        return response(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let stats = &ctx.stats;
    match path.as_str() {
        "/livez" => return response(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" => {
            let r = stats.recorder().readiness(&**stats);
            return if r.ready {
                response(StatusCode::OK, TEXT, "ok\n")
            } else {
                let body = format!("not ready: {}\n", r.missing().join("; "));
                response(StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
            };
        }
        _ => {}
    }
    if let Some(auth) = &ctx.auth {
        // Bodies of refusals carry nothing beyond the status line's meaning.
        match auth.check(req.headers(), &path).await {
            Decision::Allowed => {}
            Decision::Unauthenticated => {
                let mut r = response(StatusCode::UNAUTHORIZED, TEXT, "Unauthorized\n");
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                return r;
            }
            Decision::Forbidden => return response(StatusCode::FORBIDDEN, TEXT, "Forbidden\n"),
            Decision::Unavailable(why) => {
                tracing::warn!(reason = %why, path = %path, "diagnostics access check failed");
                return response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "access check unavailable\n",
                );
            }
        }
    }
    match path.as_str() {
        "/metrics" => response(
            StatusCode::OK,
            OPENMETRICS,
            stats.recorder().encode_metrics(&**stats),
        ),
        "/debug/state" => {
            let state = stats.recorder().debug_state(&**stats);
            match serde_json::to_vec_pretty(&state) {
                Ok(body) => response(StatusCode::OK, "application/json", body),
                Err(e) => response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("cannot encode the state: {e}\n"),
                ),
            }
        }
        _ => {
            let state = stats.recorder().debug_state(&**stats);
            response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                super::html::render(&state),
            )
        }
    }
}
