//! The architecture, checked: the crates of the workspace and the top-level modules of the
//! `bindlet-core`, `bindlet-agent` and `bindlet` crates form layers, and code may only
//! import from layers below its own (README, Architecture). Cargo already refuses a cycle
//! between crates; this test also refuses an upward edge between crates, any edge between
//! modules that the table below does not allow, and kube, tokio or hyper in the pure
//! crate's dependency tree, so the layering cannot erode one `use` at a time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The top-level modules of each crate that has several, bottom layer first: a module may
/// import (`crate::<module>`) only modules of lower layers of its crate. Names a crate
/// re-exports from the crates below it (`api`, `sim`, `agent`, ...) are below everything.
const CRATE_LAYERS: &[(&str, &[&[&str]])] = &[
    (
        "src/core",
        &[
            // Request validation, status semantics, the pipeline; volume rules.
            &["binding", "volume"],
            // Verdicts over the GPU snapshot and the node; flag defaults.
            &["gpu", "node", "flags"],
            // DRA and NUMA, which read the GPU snapshot too.
            &["dra", "numa"],
        ],
    ),
    (
        "src/agent",
        &[
            // The one door to the API server, and the node's filesystem.
            &["kubeapi", "volume"],
            // The GPU backends and the diagnostics recorder.
            &["gpu", "diag"],
            // The node's topology (it reads the GPU snapshot).
            &["numa"],
            // Plugins: each one's API adapter over the decisions of bindlet-core.
            &["plugins"],
            // The agent: watches, queue, workers, Lease.
            &["daemon"],
        ],
    ),
    (
        "src",
        &[
            // What runs the agent or talks to a cluster for a person.
            &["bench", "demo", "manual"],
            &["cli"],
        ],
    ),
];

/// The crates of the workspace, bottom first: the workspace crates each may use, and those
/// it may use in its tests only.
const CRATES: &[(&str, &[&str], &[&str])] = &[
    ("src/api", &[], &[]),
    ("src/core", &["bindlet-api"], &[]),
    ("src/sim", &["bindlet-api"], &[]),
    // The pod-resources client is tested against the simulated kubelet's server.
    (
        "src/agent",
        &["bindlet-api", "bindlet-core"],
        &["bindlet-sim"],
    ),
    (
        ".",
        &[
            "bindlet-agent",
            "bindlet-api",
            "bindlet-core",
            "bindlet-sim",
        ],
        &[],
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The source without comments and string or char literals, so a doc link or a message
/// naming a higher module is not an import.
fn code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"' | '#')) && !ident_before(&chars, i) {
            // Raw string: r"..." or r#"..."#.
            let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            i += 2 + hashes;
            while i < chars.len() {
                if chars[i] == '"' && chars[i + 1..].iter().take(hashes).all(|&h| h == '#') {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x' or an escape), not a lifetime.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// The modules `text` names as `crate::<module>` or inside `crate::{...}`.
fn imported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `bindlet_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_from_layers_below_it() {
    let mut violations = Vec::new();
    for (dir, layers) in CRATE_LAYERS {
        let crate_root = root().join(dir);
        let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
        // Directories of other crates inside this one's folder (src/agent inside src).
        let nested: BTreeSet<String> = std::fs::read_dir(&crate_root)
            .expect("read crate dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("Cargo.toml").exists())
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        let mut files = Vec::new();
        rust_files(&crate_root, &mut files);
        let mut seen = BTreeSet::new();
        for file in files {
            let rel = file.strip_prefix(&crate_root).expect("under the crate");
            let first = rel.iter().next().and_then(|c| c.to_str()).unwrap_or("");
            let module = first.trim_end_matches(".rs");
            if nested.contains(module) || matches!(module, "lib" | "main") {
                continue;
            }
            seen.insert(module.to_string());
            let Some(own) = layer_of(module) else {
                violations.push(format!("{dir}: module {module} is in no layer"));
                continue;
            };
            let text = std::fs::read_to_string(&file).expect("read");
            for target in imported(&code(&text)) {
                if target == module {
                    continue;
                }
                match layer_of(&target) {
                    Some(t) if t < own => {}
                    Some(_) => violations.push(format!(
                        "{dir}/{} imports crate::{target}, which is not in a layer below {module}",
                        rel.display()
                    )),
                    // Not a module of this crate: a name re-exported from a crate below.
                    None => {}
                }
            }
        }
        for layer in layers.iter() {
            for m in layer.iter() {
                if !seen.contains(*m) {
                    violations.push(format!("{dir}: the layers list {m}, which is not a module"));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn each_crate_uses_only_the_workspace_crates_below_it() {
    let workspace_deps = |manifest: &str, sections: &[&str]| -> BTreeSet<String> {
        manifest
            .split("\n[")
            .filter(|section| sections.iter().any(|s| section.starts_with(s)))
            .flat_map(str::lines)
            .filter_map(|l| l.split(['=', '.']).next())
            .map(str::trim)
            .filter(|name| name.starts_with("bindlet"))
            .map(str::to_string)
            .collect()
    };
    for (dir, allowed, for_tests) in CRATES {
        let manifest =
            std::fs::read_to_string(root().join(dir).join("Cargo.toml")).expect("read Cargo.toml");
        let deps = workspace_deps(&manifest, &["dependencies]", "build-dependencies]"]);
        let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        assert!(
            deps.is_subset(&allowed),
            "{dir} uses {deps:?}; only {allowed:?} lie below it"
        );
        let dev = workspace_deps(&manifest, &["dev-dependencies]"]);
        let dev_allowed: BTreeSet<String> = allowed
            .iter()
            .cloned()
            .chain(for_tests.iter().map(|s| s.to_string()))
            .collect();
        assert!(
            dev.is_subset(&dev_allowed),
            "{dir}'s tests use {dev:?}; only {dev_allowed:?} are allowed"
        );
    }
}

#[test]
fn the_core_decisions_need_no_api_client() {
    // The pure crate names no kube client, watch or runtime type: its inputs are snapshots.
    // (k8s-openapi types are data and allowed.)
    let src = root().join("src/core");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let text = code(&std::fs::read_to_string(&file).expect("read"));
        // Test modules come last in a file (clippy's items_after_test_module) and may
        // use a runtime.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        for banned in [
            "kube::",
            "kube_client",
            "tokio::",
            "hyper::",
            "std::fs",
            "nix::",
        ] {
            if text.contains(banned) {
                violations.push(format!("{} uses {banned}", file.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_core_crate_has_no_kube_tokio_or_hyper_in_its_dependency_tree() {
    // Cargo resolves the tree for bindlet-core alone (its normal dependencies, with the
    // features it asks for), so what the agent adds for itself (bindlet-api's `kube`
    // feature) does not count.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "bindlet-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(root().join("Cargo.toml"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains("bindlet-core") && names.contains("k8s-openapi"),
        "{tree}"
    );
    let banned: Vec<&&str> = names
        .iter()
        .filter(|n| {
            matches!(
                **n,
                "kube"
                    | "kube-core"
                    | "kube-derive"
                    | "kube-client"
                    | "kube-runtime"
                    | "tokio"
                    | "hyper"
                    | "hyper-util"
            )
        })
        .collect();
    assert!(
        banned.is_empty(),
        "bindlet-core depends on {banned:?}:\n{tree}"
    );
    // And it compiles that way: built alone, bindlet-api's `kube` feature is off, so a
    // use of anything kube-only in bindlet-core fails here (the workspace build, where the
    // agent turns the feature on, would not notice).
    let check =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "check",
                "--offline",
                "--locked",
                "--quiet",
                "-p",
                "bindlet-core",
                "--manifest-path",
            ])
            .arg(root().join("Cargo.toml"))
            .output()
            .expect("run cargo check");
    assert!(
        check.status.success(),
        "bindlet-core does not build without kube: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}
