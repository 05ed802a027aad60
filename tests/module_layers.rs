//! The architecture, checked: the crates of the workspace and the top-level modules of the
//! `bindlet` crate form layers, and code may only import from layers below its own (README,
//! Architecture). Cargo already refuses a cycle between crates; this test also refuses an
//! upward edge between crates and any edge between modules that the table below does not
//! allow, so the layering cannot erode one `use` at a time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The top-level modules of the `bindlet` crate, bottom layer first. A module may import
/// (`crate::<module>`) only modules of lower layers.
const LAYERS: &[&[&str]] = &[
    // Pure rules and the one door to the API server.
    &["binding", "kubeapi", "volume"],
    // Pure decisions over local facts, and the diagnostics recorder.
    &["gpu", "node", "diag"],
    &["dra", "numa"],
    // Plugins: each one's API adapter over the decisions above.
    &["plugins"],
    // The agent: watches, queue, workers, Lease.
    &["agent"],
    // What runs the agent or talks to a cluster for a person.
    &["bench", "demo", "manual"],
    &["cli"],
];

/// The crates of the workspace, bottom first, with the workspace crates each may use.
const CRATES: &[(&str, &[&str])] = &[
    ("src/api", &[]),
    ("src/sim", &["bindlet-api"]),
    (".", &["bindlet-api", "bindlet-sim"]),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The source without comments, so a doc link to a higher module is not an import.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        rest = rest[i..].find("*/").map_or("", |j| &rest[i + j + 2..]);
    }
    out.push_str(rest);
    out.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
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
    let src = root().join("src");
    let member_crates: BTreeSet<String> = CRATES
        .iter()
        .filter(|(dir, _)| *dir != ".")
        .filter_map(|(dir, _)| dir.strip_prefix("src/").map(str::to_string))
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.iter().next().and_then(|c| c.to_str()).unwrap_or("");
        let module = first.trim_end_matches(".rs");
        if member_crates.contains(module) || module == "lib" || module == "main" {
            continue;
        }
        seen.insert(module.to_string());
        let Some(own) = layer_of(module) else {
            violations.push(format!("module {module} is in no layer of LAYERS"));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read");
        for target in imported(&code(&text)) {
            if target == module {
                continue;
            }
            // `crate::api` and `crate::sim` are the member crates, re-exported by lib.rs.
            if member_crates.contains(&target) {
                continue;
            }
            match layer_of(&target) {
                Some(t) if t < own => {}
                Some(_) => violations.push(format!(
                    "{} imports crate::{target}, which is not in a layer below {module}",
                    rel.display()
                )),
                None => violations.push(format!(
                    "{} imports crate::{target}, a module in no layer",
                    rel.display()
                )),
            }
        }
    }
    let listed: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|l| l.iter().map(|m| m.to_string()))
        .collect();
    for gone in listed.difference(&seen) {
        violations.push(format!(
            "LAYERS lists {gone}, which is not a module any more"
        ));
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn each_crate_uses_only_the_workspace_crates_below_it() {
    for (dir, allowed) in CRATES {
        let manifest =
            std::fs::read_to_string(root().join(dir).join("Cargo.toml")).expect("read Cargo.toml");
        let deps = manifest
            .split("\n[")
            .filter(|section| {
                section.starts_with("dependencies]")
                    || section.starts_with("dev-dependencies]")
                    || section.starts_with("build-dependencies]")
            })
            .flat_map(str::lines)
            .filter_map(|l| l.split(['=', '.']).next())
            .map(str::trim)
            .filter(|name| name.starts_with("bindlet"))
            .collect::<BTreeSet<_>>();
        let allowed: BTreeSet<&str> = allowed.iter().copied().collect();
        assert!(
            deps.is_subset(&allowed),
            "{dir} uses {deps:?}; only {allowed:?} lie below it"
        );
    }
}

#[test]
fn the_core_decisions_need_no_api_client() {
    // The pure layers name no kube client, watch or runtime type: their inputs are
    // snapshots. (kube's derive and k8s-openapi types are data and allowed.)
    let src = root().join("src");
    let mut violations = Vec::new();
    for module in ["binding", "volume", "node", "dra", "numa"] {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src.join(format!("{module}.rs")));
        }
        for file in files {
            let text = code(&std::fs::read_to_string(&file).expect("read"));
            // Test modules come last in a file (clippy's items_after_test_module) and may
            // use a runtime.
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            for banned in [
                "kube::Client",
                "kube::Api",
                "kube::runtime",
                "tokio::",
                "hyper::",
            ] {
                if text.contains(banned) {
                    violations.push(format!("{} uses {banned}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
