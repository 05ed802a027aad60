//! HTTP: the accept loop, routing, verbs, discovery and response encoding.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use super::Shared;
use super::objects::PatchType;
use super::registry::{MAIN_VERBS, ResourceDef, Special};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::store::{DeleteOptions, Deletion, ObjKey, Sub, WatchStart};
use super::watch::{self, Filter, WatchRequest, parse_rv};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted (the real server's limit is 3 MiB for most writes).
const MAX_BODY: usize = 8 * 1024 * 1024;

pub(crate) async fn serve(sh: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = sh.root.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let token = sh.conn_token();
        let sh2 = sh.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let sh = sh2.clone();
                async move { Ok::<_, Infallible>(handle(sh, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                // restart()/shutdown(): cut the connection mid-flight.
                _ = token.cancelled() => {}
            }
        });
    }
}

fn full(code: u16, ctype: &str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(ctype) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn json_resp(code: u16, v: &Value, warnings: &[String]) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = full(code, "application/json", Bytes::from(body));
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append("warning", v);
        }
    }
    r
}

pub(crate) fn err_resp(e: &ApiError) -> Response<Body> {
    if e.plain {
        return full(
            404,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"404 page not found\n"),
        );
    }
    let mut r = json_resp(e.code, &e.to_status(), &[]);
    if let Some(s) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
}

fn truthy(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("true") | Some("1"))
}

#[derive(Debug)]
struct ResPath {
    group: String,
    version: String,
    ns: Option<String>,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    Resource(ResPath),
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Some(Route::Version),
        ["healthz"] | ["livez"] | ["readyz"] => return Some(Route::Health),
        ["api"] => return Some(Route::Api),
        ["apis"] => return Some(Route::Apis),
        ["api", v] => return Some(Route::GroupVersion(String::new(), v.to_string())),
        ["apis", g] => return Some(Route::Group(g.to_string())),
        ["apis", g, v] => return Some(Route::GroupVersion(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let s = |i: usize| rest.get(i).map(|x| x.to_string());
    let rp = if rest.len() >= 3
        && rest[0] == "namespaces"
        && rest[2] != "status"
        && rest[2] != "finalize"
    {
        if rest.len() > 5 {
            return None;
        }
        ResPath {
            group,
            version,
            ns: s(1),
            resource: rest[2].to_string(),
            name: s(3),
            sub: s(4),
        }
    } else {
        if rest.len() > 3 {
            return None;
        }
        ResPath {
            group,
            version,
            ns: None,
            resource: rest[0].to_string(),
            name: s(1),
            sub: s(2),
        }
    };
    Some(Route::Resource(rp))
}

async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let latency = sh.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (parts, body) = req.into_parts();
    let query = parse_query(parts.uri.query());
    let Some(r) = route(parts.uri.path()) else {
        sh.count("get", "nonresource");
        return err_resp(&ApiError::page_not_found());
    };
    let rp = match r {
        Route::Resource(rp) => rp,
        other => {
            sh.count("get", "discovery");
            return discovery(&sh, other);
        }
    };
    let def = {
        let st = sh.lock_state();
        match st.registry.get(&rp.group, &rp.version, &rp.resource) {
            Some(d) => d,
            None => {
                let known = st.registry.has_group_version(&rp.group, &rp.version);
                drop(st);
                sh.count(&parts.method.as_str().to_lowercase(), &rp.resource);
                return err_resp(&if known {
                    ApiError::no_resource()
                } else {
                    ApiError::page_not_found()
                });
            }
        }
    };
    let op = match classify(&parts.method, &def, &rp, &query) {
        Ok(op) => op,
        Err(e) => {
            sh.count(&parts.method.as_str().to_lowercase(), &rp.resource);
            return err_resp(&e);
        }
    };
    let label = match &rp.sub {
        Some(s) => format!("{}/{}", def.plural, s),
        None => def.plural.clone(),
    };
    sh.count(op.verb(), &label);
    if let Some(code) = sh.faults.check(op.verb(), &label) {
        return err_resp(&injected(code, &def, rp.name.as_deref().unwrap_or("")));
    }
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return err_resp(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                "the request body is too large",
            ));
        }
    };
    let ctype = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let bearer = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if def.special == Special::AccessReview && def.plural == "selfsubjectaccessreviews" {
        // About the caller itself, so answered here where its token is known.
        if op != Op::Create {
            return err_resp(&ApiError::method_not_allowed());
        }
        return match parse_json(&bytes).and_then(|b| sh.auth.self_access_review(bearer, b)) {
            Ok(answer) => json_resp(201, &answer, &[]),
            Err(e) => err_resp(&e),
        };
    }
    let lacks_claim_binding = def.special == Special::ResourceClaim
        && bearer.is_some_and(|t| sh.auth.lacks_claim_binding(t));
    match execute(
        &sh,
        &def,
        &rp,
        op,
        &query,
        &ctype,
        &bytes,
        lacks_claim_binding,
    ) {
        Ok(r) => r,
        Err(e) => err_resp(&e),
    }
}

fn injected(code: u16, def: &ResourceDef, name: &str) -> ApiError {
    match code {
        409 => ApiError::stale(&def.plural, &def.group, name),
        404 => ApiError::not_found(&def.plural, &def.group, name),
        429 => ApiError::for_code(429, "Too many requests, please try again later."),
        500 => ApiError::for_code(500, "Internal error occurred: injected fault"),
        503 => ApiError::for_code(
            503,
            "the server is currently unable to handle the request (injected fault)",
        ),
        c => ApiError::for_code(c, format!("injected fault ({c})")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    List,
    Watch,
    Create,
    Bind,
    Update,
    Patch,
    Delete,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::List => "list",
            Op::Watch => "watch",
            Op::Create | Op::Bind => "create",
            Op::Update => "update",
            Op::Patch => "patch",
            Op::Delete => "delete",
        }
    }
}

fn classify(
    method: &Method,
    def: &ResourceDef,
    rp: &ResPath,
    q: &HashMap<String, String>,
) -> Result<Op, ApiError> {
    if rp.name.is_some() && def.namespaced && rp.ns.is_none() {
        return Err(ApiError::no_resource());
    }
    if !def.namespaced && rp.ns.is_some() {
        return Err(ApiError::no_resource());
    }
    match rp.sub.as_deref() {
        None => {}
        Some("status") if def.status_subresource => {}
        Some("binding") if def.binding_subresource => {}
        Some(_) => return Err(ApiError::no_resource()),
    }
    let binding = rp.sub.as_deref() == Some("binding");
    let named = rp.name.is_some();
    Ok(match *method {
        Method::GET if !named => {
            if truthy(q.get("watch")) {
                Op::Watch
            } else {
                Op::List
            }
        }
        Method::GET if !binding => Op::Get,
        Method::POST if !named => Op::Create,
        Method::POST if binding => Op::Bind,
        Method::PUT if named && !binding => Op::Update,
        Method::PATCH if named && !binding => Op::Patch,
        Method::DELETE if named && rp.sub.is_none() => Op::Delete,
        _ => return Err(ApiError::method_not_allowed()),
    })
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn execute(
    sh: &Arc<Shared>,
    def: &Arc<ResourceDef>,
    rp: &ResPath,
    op: Op,
    q: &HashMap<String, String>,
    ctype: &str,
    bytes: &[u8],
    lacks_claim_binding: bool,
) -> Result<Response<Body>, ApiError> {
    let ns = rp.ns.clone().unwrap_or_default();
    let name = rp.name.clone().unwrap_or_default();
    let sub = if rp.sub.as_deref() == Some("status") {
        Sub::Status
    } else {
        Sub::Main
    };
    if q.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the simulated API server",
        ));
    }
    if matches!(def.special, Special::TokenReview | Special::AccessReview) {
        // Reviews are answered, never stored: create is their only verb.
        if op != Op::Create {
            return Err(ApiError::method_not_allowed());
        }
        let body = parse_json(bytes)?;
        let answer = if def.special == Special::TokenReview {
            sh.auth.token_review(body)?
        } else {
            sh.auth.access_review(body)?
        };
        return Ok(json_resp(201, &answer, &[]));
    }
    match op {
        Op::Get => {
            let o = sh.lock_state().get(def, &ns, &name)?;
            Ok(json_resp(200, &o, &[]))
        }
        Op::List => list(sh, def, rp.ns.as_deref(), q),
        Op::Watch => start_watch(sh, def, rp.ns.clone(), q),
        Op::Create => {
            let body = parse_json(bytes)?;
            let r = sh.lock_state().create(def, &ns, body)?;
            Ok(json_resp(201, &r.object, &r.warnings))
        }
        Op::Bind => {
            let body = parse_json(bytes)?;
            sh.lock_state().bind(def, &ns, &name, &body)?;
            Ok(json_resp(201, &status::success(201, None), &[]))
        }
        Op::Update => {
            let body = parse_json(bytes)?;
            let mut st = sh.lock_state();
            st.lacks_claim_binding = lacks_claim_binding;
            let r = st.update(def, &ns, &name, body, sub);
            st.lacks_claim_binding = false;
            drop(st);
            let r = r?;
            Ok(json_resp(
                if r.created { 201 } else { 200 },
                &r.object,
                &r.warnings,
            ))
        }
        Op::Patch => {
            let pt = PatchType::from_content_type(ctype).ok_or_else(|| {
                ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                    if def.builtin { ", application/strategic-merge-patch+json" } else { "" }
                ))
            })?;
            if pt == PatchType::Strategic && !def.builtin {
                return Err(ApiError::unsupported_media_type(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            if pt == PatchType::Apply && q.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return Err(ApiError::invalid(
                    "PatchOptions",
                    "meta.k8s.io",
                    "",
                    vec![status::Cause::required(
                        "fieldManager",
                        "is required for apply patch",
                    )],
                ));
            }
            let mut st = sh.lock_state();
            st.lacks_claim_binding = lacks_claim_binding;
            let r = st.patch(def, &ns, &name, pt, bytes, sub);
            st.lacks_claim_binding = false;
            drop(st);
            let r = r?;
            Ok(json_resp(
                if r.created { 201 } else { 200 },
                &r.object,
                &r.warnings,
            ))
        }
        Op::Delete => {
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(parse_json(bytes)?)
            };
            let opts = DeleteOptions::from_request(body.as_ref(), q)?;
            let outcome = sh.lock_state().delete(def, &ns, &name, &opts)?;
            match outcome {
                Deletion::Gone(gone) if !def.return_deleted_object => {
                    let uid = super::objects::meta_str(&gone, "uid");
                    let d = status::details_value(&name, &def.group, &def.plural, uid);
                    Ok(json_resp(200, &status::success(200, Some(d)), &[]))
                }
                Deletion::Gone(gone) => Ok(json_resp(200, &gone, &[])),
                // Not deleted yet: the object as it is now; 202 only for the deprecated
                // `orphanDependents: false`, as the real handler does.
                Deletion::Pending(cur) => {
                    let code = if opts.orphan_dependents == Some(false) {
                        202
                    } else {
                        200
                    };
                    Ok(json_resp(code, &cur, &[]))
                }
            }
        }
    }
}

fn selectors(def: &ResourceDef, q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    Ok(Filter {
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(
            q.get("fieldSelector").map(String::as_str).unwrap_or(""),
            &def.field_labels,
        )?,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

fn encode_continue(rv: u64, key: &ObjKey) -> String {
    hex(json!({"rv": rv, "ns": key.0, "name": key.1})
        .to_string()
        .as_bytes())
}

fn decode_continue(s: &str) -> Option<(u64, ObjKey)> {
    let v: Value = serde_json::from_slice(&unhex(s)?).ok()?;
    Some((
        v.get("rv")?.as_u64()?,
        (
            v.get("ns")?.as_str()?.to_string(),
            v.get("name")?.as_str()?.to_string(),
        ),
    ))
}

/// Serializes an object map without `kind`/`apiVersion` (built-in list items, like the real server).
struct Stripped<'a>(&'a Value);

impl Serialize for Stripped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in m {
                    if k != "kind" && k != "apiVersion" {
                        map.serialize_entry(k, v)?;
                    }
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

fn list(
    sh: &Arc<Shared>,
    def: &Arc<ResourceDef>,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let filter = selectors(def, q)?;
    let limit = match q.get("limit").map(String::as_str) {
        None | Some("") => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(_) => None,
            Err(_) => return Err(ApiError::bad_request(format!("invalid limit: {l}"))),
        },
    };
    let rv_param = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let rvm = q
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    let cont = q.get("continue").map(String::as_str).unwrap_or("");
    let token = if cont.is_empty() {
        None
    } else {
        if !rv_param.is_empty() && rv_param != "0" {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        Some(decode_continue(cont).ok_or_else(|| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?)
    };
    if !rvm.is_empty() && rv_param.is_empty() {
        return Err(ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            vec![status::Cause::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            )],
        ));
    }
    let (items, next, remaining, list_rv) = {
        let st = sh.lock_state();
        let current = st.rv;
        if !rv_param.is_empty() {
            let rv = parse_rv(rv_param)?;
            if rv > current {
                return Err(ApiError::for_code(504, format!("Too large resource version: {rv}, current: {current}"))
                    .with_details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1})));
            }
            if rvm == "Exact" && rv != current && rv != 0 {
                return Err(ApiError::expired(
                    "The resourceVersion for the provided list is too old.",
                ));
            }
        }
        let (list_rv, after) = match &token {
            Some((rv, key)) => (*rv, Some(key)),
            None => (current, None),
        };
        let (items, next, remaining) =
            st.list(def, ns, &filter.labels, &filter.fields, limit, after);
        (items, next, remaining, list_rv)
    };
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), Value::String(list_rv.to_string()));
    if let Some(k) = &next {
        meta.insert(
            "continue".into(),
            Value::String(encode_continue(list_rv, k)),
        );
        if filter.labels.is_empty() && filter.fields.is_empty() {
            meta.insert("remainingItemCount".into(), json!(remaining));
        }
    }
    let mut out = Vec::with_capacity(256 + items.len() * 1024);
    out.extend_from_slice(b"{\"kind\":");
    let _ = serde_json::to_writer(&mut out, &def.list_kind);
    out.extend_from_slice(b",\"apiVersion\":");
    let _ = serde_json::to_writer(&mut out, &def.api_version());
    out.extend_from_slice(b",\"metadata\":");
    let _ = serde_json::to_writer(&mut out, &meta);
    out.extend_from_slice(b",\"items\":[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = if def.builtin {
            serde_json::to_writer(&mut out, &Stripped(it))
        } else {
            serde_json::to_writer(&mut out, &**it)
        };
    }
    out.extend_from_slice(b"]}");
    Ok(full(200, "application/json", Bytes::from(out)))
}

fn start_watch(
    sh: &Arc<Shared>,
    def: &Arc<ResourceDef>,
    ns: Option<String>,
    q: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let filter = selectors(def, q)?;
    let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let rvm = q
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    let bookmarks = truthy(q.get("allowWatchBookmarks"));
    let send_initial = q.get("sendInitialEvents").map(|v| v == "true" || v == "1");
    let timeout = match q.get("timeoutSeconds").map(String::as_str) {
        None | Some("") => None,
        Some(t) => match t.parse::<u64>() {
            Ok(0) => None,
            Ok(n) => Some(Duration::from_secs(n)),
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "invalid timeoutSeconds: {t}"
                )));
            }
        },
    };
    let (start, initial_end) = if send_initial == Some(true) {
        let mut causes = Vec::new();
        if rvm != "NotOlderThan" {
            causes.push(status::Cause::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !bookmarks {
            causes.push(status::Cause::forbidden(
                "allowWatchBookmarks",
                "sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", causes));
        }
        (WatchStart::Snapshot, true)
    } else if rv.is_empty() || rv == "0" {
        if send_initial == Some(false) {
            (
                WatchStart::FromRv(sh.current_rv.load(Ordering::Acquire)),
                false,
            )
        } else {
            (WatchStart::Snapshot, false)
        }
    } else {
        (WatchStart::FromRv(parse_rv(rv)?), false)
    };
    let rx = watch::open(
        sh,
        WatchRequest {
            def: def.clone(),
            ns,
            start,
            initial_events_end: initial_end,
            bookmarks,
            timeout,
            filter,
        },
    );
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

fn resource_entry(d: &ResourceDef) -> Vec<Value> {
    let mut main = json!({
        "name": d.plural,
        "singularName": d.singular,
        "namespaced": d.namespaced,
        "kind": d.kind,
        "verbs": MAIN_VERBS,
    });
    if !d.short_names.is_empty()
        && let Some(m) = main.as_object_mut()
    {
        m.insert("shortNames".into(), json!(d.short_names));
    }
    let mut out = vec![main];
    if d.binding_subresource {
        out.push(json!({"name": format!("{}/binding", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": "Binding", "verbs": ["create"]}));
    }
    if d.status_subresource {
        out.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced, "kind": d.kind, "verbs": ["get", "patch", "update"]}));
    }
    out
}

fn discovery(sh: &Arc<Shared>, r: Route) -> Response<Body> {
    let st = sh.lock_state();
    let gv = |g: &str, v: &str| json!({"groupVersion": format!("{g}/{v}"), "version": v});
    let group_obj = |g: &str, vs: &[String]| {
        let versions: Vec<Value> = vs.iter().map(|v| gv(g, v)).collect();
        let preferred = versions.first().cloned().unwrap_or(json!({}));
        json!({"name": g, "versions": versions, "preferredVersion": preferred})
    };
    match r {
        Route::Version => json_resp(
            200,
            &json!({
                "major": "1", "minor": "36", "gitVersion": "v1.36.0", "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0",
                "compiler": "gc", "platform": "linux/amd64"
            }),
            &[],
        ),
        Route::Health => full(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok")),
        Route::Api => json_resp(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": sh.addr.to_string()}]
            }),
            &[],
        ),
        Route::Apis => {
            let groups: Vec<Value> = st
                .registry
                .groups()
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, vs)| group_obj(g, vs))
                .collect();
            json_resp(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                &[],
            )
        }
        Route::Group(g) => match st
            .registry
            .groups()
            .iter()
            .find(|(gg, _)| *gg == g && !g.is_empty())
        {
            Some((g, vs)) => {
                let mut o = group_obj(g, vs);
                if let Some(m) = o.as_object_mut() {
                    m.insert("kind".into(), json!("APIGroup"));
                    m.insert("apiVersion".into(), json!("v1"));
                }
                json_resp(200, &o, &[])
            }
            None => err_resp(&ApiError::page_not_found()),
        },
        Route::GroupVersion(g, v) => {
            if !st.registry.has_group_version(&g, &v) {
                return err_resp(&ApiError::page_not_found());
            }
            let resources: Vec<Value> = st
                .registry
                .resources(&g, &v)
                .iter()
                .flat_map(|d| resource_entry(d))
                .collect();
            let group_version = if g.is_empty() {
                v.clone()
            } else {
                format!("{g}/{v}")
            };
            json_resp(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
                &[],
            )
        }
        Route::Resource(_) => err_resp(&ApiError::page_not_found()),
    }
}
