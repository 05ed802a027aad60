//! Keeps `daemonset/monitoring/` honest: every rule and dashboard expression parses as
//! PromQL, and every metric it names is one a running agent exports (scraped from its
//! diagnostics server after a successful and a failed bind); the kustomize Component lists
//! files that exist and fits the DaemonSet; each alert has a runbook in the README; and
//! the `process_*` metrics are plausible.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bindlet::agent::{self, Stats};
use bindlet::api::Phase;
use bindlet::diag::{self, DiagConfig, GpuDevice, GpuFacts, NodeFacts, Recorder};
use common::{TestEnv, wait_until};
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset/monitoring")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Series written by Prometheus itself for every target, not by bindlet.
const FROM_PROMETHEUS: &[&str] = &["up"];

// ---- what the files use ----

/// Metric names selected by a PromQL expression; an error when it does not parse, or
/// selects series without naming a metric (nothing could be checked then).
fn selected_metrics(expr: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>);
    impl Names {
        fn add(&mut self, vs: &VectorSelector) -> Result<(), String> {
            let by_matcher = vs.matchers.matchers.iter().find(|m| {
                m.name == "__name__" && matches!(m.op, promql_parser::label::MatchOp::Equal)
            });
            match (&vs.name, by_matcher) {
                (Some(n), _) => self.0.insert(n.clone()),
                (None, Some(m)) => self.0.insert(m.value.clone()),
                (None, None) => return Err(format!("selector without a metric name: {vs}")),
            };
            Ok(())
        }
    }
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
            match e {
                Expr::VectorSelector(vs) => self.add(vs)?,
                Expr::MatrixSelector(ms) => self.add(&ms.vs)?,
                _ => {}
            }
            Ok(true)
        }
    }
    let ast = promql_parser::parser::parse(expr)?;
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &ast)?;
    Ok(names.0)
}

/// Alert name → expression, from the PrometheusRule.
fn alert_rules() -> BTreeMap<String, String> {
    let path = monitoring_dir().join("prometheus-rule.yaml");
    let doc: Value = serde_yaml::from_str(&read(&path)).expect("YAML");
    assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(doc["kind"], "PrometheusRule");
    let mut out = BTreeMap::new();
    for group in doc["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("alert or record name");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(
                out.insert(name.to_string(), expr.to_string()).is_none(),
                "{name} twice"
            );
            if rule["alert"].is_string() {
                assert!(
                    rule["labels"]["severity"].is_string(),
                    "{name}: no severity"
                );
                assert!(
                    rule["annotations"]["summary"].is_string(),
                    "{name}: no summary"
                );
            }
        }
    }
    out
}

/// Grafana's variables in the dashboard's queries, replaced by what Prometheus accepts.
fn expand_grafana_variables(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", "5m")
        .replace("$node", ".*");
    assert!(!e.contains('$'), "an unknown Grafana variable in {expr}");
    e
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&monitoring_dir().join("bindlet-dashboard.json")))
        .expect("dashboard JSON")
}

/// Panel title → expressions (Grafana variables expanded), rows' nested panels included.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("a target without expr");
                out.push((title.clone(), expand_grafana_variables(expr)));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    // A variable's `label_values(metric, label)` names a metric too.
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let Some(q) = v["definition"].as_str() else {
            continue;
        };
        if let Some(rest) = q.strip_prefix("label_values(") {
            let metric = rest.split(',').next().unwrap_or("").trim();
            out.push((format!("variable {}", v["name"]), metric.to_string()));
        }
    }
    out
}

// ---- what the agent exports ----

/// Every series name a scrape offers: the sample names, plus the names a declared family
/// yields for its type (a counter family without samples yet still exports `_total`).
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut it = decl.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                out.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

fn missing_names(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|n| !exported.contains(*n) && !FROM_PROMETHEUS.contains(&n.as_str()))
        .cloned()
        .collect()
}

/// Checks every rule and panel against `exported`; returns the problems found.
fn check_against(exported: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |what: String, expr: &str| match selected_metrics(expr) {
        Err(e) => problems.push(format!("{what}: does not parse: {e}\n  {expr}")),
        Ok(names) => {
            let missing = missing_names(&names, exported);
            if !missing.is_empty() {
                problems.push(format!("{what}: not exported: {missing:?}"));
            }
        }
    };
    for (alert, expr) in alert_rules() {
        check(format!("alert {alert}"), &expr);
    }
    for (panel, expr) in dashboard_queries(&dashboard()) {
        check(format!("panel {panel:?}"), &expr);
    }
    problems
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: diag\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (code, body.to_string())
}

/// The value of the first sample of `series` (an exact name, no labels).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{scrape}"))
}

struct OneGpu;

impl NodeFacts for OneGpu {
    fn gpus(&self) -> GpuFacts {
        GpuFacts::Loaded {
            devices: vec![GpuDevice {
                index: 0,
                uuid: "GPU-0000".into(),
                name: "Test GPU".into(),
                memory_total_bytes: 80 << 30,
                memory_used_bytes: Some(0),
                healthy: true,
                reason: None,
            }],
        }
    }
}

/// Scrapes an agent that bound one pod and gave up on another, refused by a volume check
/// (families without samples are not in a scrape at all, so each one is exercised).
async fn scrape_after_binds() -> String {
    let env = TestEnv::new("monitoring").await;
    let node = env.node_name("n1");
    env.create_node(&node, json!({})).await;
    let stats = Arc::new(Stats::with_recorder(Arc::new(Recorder::new(50))));
    // GPU facts stand in for an inventory, so gpu_healthy has a sample.
    stats.diag.set_facts(Arc::new(OneGpu));
    let stop = CancellationToken::new();
    let server = diag::start(
        DiagConfig::plain(([127, 0, 0, 1], 0).into()),
        stats.clone(),
        None,
        stop.clone(),
    )
    .await
    .expect("diag server");
    let mut cfg = env.agent_config(&node);
    cfg.plugins.gpu.args.gpu_verification = bindlet::plugins::CheckMode::Off;
    let agent = agent::spawn_with_stats(env.client.clone(), cfg, stats.clone());
    wait_until(Duration::from_secs(20), "agent leads", || async {
        stats.is_leading() && stats.is_synced()
    })
    .await;
    env.pod_and_request("fine", &node).await;
    // A hostPath that is not there: the volume check refuses until the agent gives up.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let pod = env
        .create_pod(
            "no-dir",
            json!({ "volumes": [ { "name": "data", "hostPath": {
                "path": missing.to_string_lossy(), "type": "Directory" } } ] }),
        )
        .await;
    env.create_request("no-dir", &node, pod.metadata.uid.as_deref(), json!({}))
        .await;
    // Labelled here, selecting another node: left alone (counted, no status written).
    let pod = env.create_pod("not-mine", json!({})).await;
    env.create_request(
        "not-mine",
        &node,
        pod.metadata.uid.as_deref(),
        json!({ "selectedNode": "some-other-node" }),
    )
    .await;
    env.wait_phase("fine", Phase::Succeeded).await;
    env.wait_phase("no-dir", Phase::Failed).await;
    wait_until(
        Duration::from_secs(10),
        "not-mine is left alone",
        || async { !stats.diag.debug_state(&stats).left_alone.is_empty() },
    )
    .await;
    let (code, body) = http_get(server.addr(), "/metrics").await;
    assert_eq!(code, 200, "{body}");
    agent.stop().await.expect("stop");
    stop.cancel();
    server.stopped().await;
    env.cleanup().await;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_rules_and_dashboard_is_exported() {
    let scrape = scrape_after_binds().await;
    let exported = exported_names(&scrape);
    // Both outcomes were counted, so the failure series exist with samples.
    assert!(scrape.contains(r#"bindlet_binds_total{outcome="bound",reason=""} 1"#));
    assert!(scrape.contains(r#"outcome="failed_final""#), "{scrape}");
    assert!(
        scrape.contains(r#"bindlet_volume_check_failures_total{check="refused"} 3"#),
        "{scrape}"
    );

    let problems = check_against(&exported);
    assert!(
        problems.is_empty(),
        "monitoring files out of step with the metrics:\n{}",
        problems.join("\n")
    );
    assert_plausible_process_metrics(&scrape);

    // Not vacuous: the files use many names, among them every standard process metric.
    let mut used = BTreeSet::new();
    for expr in alert_rules().values() {
        used.extend(selected_metrics(expr).expect("parses"));
    }
    for (_, expr) in dashboard_queries(&dashboard()) {
        used.extend(selected_metrics(&expr).expect("parses"));
    }
    assert!(used.len() >= 15, "{used:?}");
    for n in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "bindlet_oldest_pending_seconds",
        "bindlet_lease_transitions_total",
    ] {
        assert!(used.contains(n), "{n} is used nowhere");
    }

    // The check bites: a renamed metric is reported.
    let mut renamed = exported.clone();
    assert!(renamed.remove("bindlet_queue_depth"));
    renamed.insert("bindlet_queue_length".into());
    let problems = check_against(&renamed);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("BindletQueueGrowing") && p.contains("bindlet_queue_depth")),
        "{problems:?}"
    );
}

/// The standard process metrics of a running agent have believable values.
fn assert_plausible_process_metrics(scrape: &str) {
    let rss = value(scrape, "process_resident_memory_bytes");
    let vms = value(scrape, "process_virtual_memory_bytes");
    let cpu = value(scrape, "process_cpu_seconds_total");
    let fds = value(scrape, "process_open_fds");
    let max_fds = value(scrape, "process_max_fds");
    let start = value(scrape, "process_start_time_seconds");
    assert!(rss > 1e6 && rss < 8e9, "RSS {rss}");
    assert!(vms >= rss, "virtual {vms} < resident {rss}");
    assert!(cpu > 0.0, "CPU {cpu}");
    assert!(fds >= 3.0 && max_fds >= fds, "fds {fds} of {max_fds}");
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        start <= now + 1.0 && now - start < 3600.0,
        "started {start}, now {now}"
    );
}

#[test]
fn scraped_rss_matches_the_bench_sampler() {
    let stats = Stats::default();
    // Sampled just before and just after the scrape: other tests of this binary run in
    // parallel threads and may grow the process between two reads, so the scrape must lie
    // within the band the two samples span (10% either side), not equal one of them.
    let before = bindlet::bench::process::ProcSample::read(std::process::id()).expect("sample");
    let scrape = stats.diag.encode_metrics(&stats);
    let sample = bindlet::bench::process::ProcSample::read(std::process::id()).expect("sample");
    let rss = value(&scrape, "process_resident_memory_bytes");
    let (a, b) = (
        before.rss_kib as f64 * 1024.0,
        sample.rss_kib as f64 * 1024.0,
    );
    assert!(
        rss >= a.min(b) * 0.9 && rss <= a.max(b) * 1.1,
        "scrape {rss} vs bench {a} before, {b} after"
    );
    let cpu = value(&scrape, "process_cpu_seconds_total");
    assert!(
        (sample.cpu_s - cpu).abs() < 0.5,
        "CPU {cpu} vs {}",
        sample.cpu_s
    );
}

#[test]
fn the_component_lists_existing_files_and_fits_the_daemonset() {
    let dir = monitoring_dir();
    let k: Value = serde_yaml::from_str(&read(&dir.join("kustomization.yaml"))).expect("YAML");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1alpha1");
    assert_eq!(k["kind"], "Component");
    let mut kinds = BTreeMap::new();
    let mut listed = BTreeSet::new();
    for r in k["resources"].as_array().expect("resources") {
        let file = r.as_str().expect("a file name");
        listed.insert(file.to_string());
        let doc: Value = serde_yaml::from_str(&read(&dir.join(file))).expect("YAML");
        kinds.insert(doc["kind"].as_str().unwrap_or("").to_string(), doc);
    }
    let gens = k["configMapGenerator"]
        .as_array()
        .expect("configMapGenerator");
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0]["options"]["labels"]["grafana_dashboard"], "1");
    for f in gens[0]["files"].as_array().expect("files") {
        let file = f.as_str().expect("file");
        listed.insert(file.to_string());
        let d: Value = serde_json::from_str(&read(&dir.join(file))).expect("dashboard JSON");
        assert!(d["panels"].as_array().is_some_and(|p| p.len() >= 10));
    }
    // Nothing in the folder is left out.
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);

    // The PodMonitor scrapes the DaemonSet's pods on its named metrics port.
    let ds: Value =
        serde_yaml::from_str(&read(&dir.join("../daemonset.yaml"))).expect("DaemonSet YAML");
    let pm = &kinds["PodMonitor"];
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let port = &container["ports"][0];
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], port["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    // The DaemonSet serves /metrics without a token; a PodMonitor sending none must match.
    let env = container["env"].as_array().expect("env");
    assert!(!env.iter().any(|e| e["name"] == "BINDLET_DIAG_AUTH"));
    assert!(endpoint.get("authorization").is_none());
    // The rules select job="bindlet": the PodMonitor's jobLabel must yield it.
    let job_label = pm["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        ds["spec"]["template"]["metadata"]["labels"][job_label],
        "bindlet"
    );
    assert!(kinds.contains_key("PrometheusRule"));

    match std::process::Command::new("kubectl")
        .args(["kustomize"])
        .arg(&dir)
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "kubectl kustomize: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for kind in ["PodMonitor", "PrometheusRule", "ConfigMap"] {
                assert!(text.contains(&format!("kind: {kind}")), "{text}");
            }
            assert!(text.contains("grafana_dashboard: \"1\""), "{text}");
        }
        Err(e) => eprintln!(
            "kubectl kustomize not run (kubectl not available: {e}); the YAML checks above stand in"
        ),
    }
}

#[test]
fn every_alert_has_a_runbook_in_the_readme() {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    let missing: Vec<String> = alert_rules()
        .into_keys()
        .filter(|a| !readme.contains(&format!("**{a}**")))
        .collect();
    assert!(missing.is_empty(), "no runbook for {missing:?}");
}

#[test]
fn the_name_checks_themselves() {
    let names = selected_metrics(
        r#"sum by (le) (rate(a_bucket{x="1"}[5m])) / ignoring(y) b + {__name__="c"} > 0.1"#,
    )
    .expect("parses");
    assert_eq!(
        names,
        BTreeSet::from(["a_bucket".into(), "b".into(), "c".into()])
    );
    assert!(selected_metrics("rate(a[5m]").is_err());
    assert!(selected_metrics(r#"{job="x"}"#).is_err());
    let exported = exported_names(
        "# TYPE h histogram\n# TYPE c counter\n# TYPE g gauge\ng 1\nx_total{a=\"b\"} 2\n# EOF\n",
    );
    for n in ["h_bucket", "h_sum", "h_count", "c_total", "g", "x_total"] {
        assert!(exported.contains(n), "{n}: {exported:?}");
    }
    assert!(!exported.contains("c") && !exported.contains("h"));
}
