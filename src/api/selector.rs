//! Node selectors as Kubernetes evaluates them (kube-scheduler's `nodeaffinity` helpers):
//! the terms of a selector are ORed, the requirements of a term ANDed, an empty term matches
//! no node, and `matchFields` knows `metadata.name` with `In`/`NotIn` only. One
//! implementation for pod affinity, PV node affinity and DRA allocation selectors.

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};

/// Whether `sel` selects `node` (any of its terms matches).
pub fn node_selector_matches(sel: &NodeSelector, node: &Node) -> bool {
    sel.node_selector_terms
        .iter()
        .any(|t| term_matches(t, node).is_ok())
}

/// The value of the node's label `key`, if it has one.
pub fn node_label<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// One term: every expression and field requirement must hold (an empty term matches nothing,
/// as in Kubernetes). `Err` names the first requirement that does not.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> Result<(), String> {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return Err("empty term matches no node".into());
    }
    for r in exprs {
        requirement_matches(r, node_label(node, &r.key), "label")?;
    }
    for r in fields {
        if r.key != "metadata.name" {
            return Err(format!(
                "field {} is not supported (only metadata.name)",
                r.key
            ));
        }
        if !matches!(r.operator.as_str(), "In" | "NotIn") {
            return Err(format!(
                "operator {} is not valid for matchFields (In, NotIn)",
                r.operator
            ));
        }
        requirement_matches(r, node.metadata.name.as_deref(), "field")?;
    }
    Ok(())
}

/// Kubernetes node selector requirement semantics for one value (`None`: key absent).
pub fn requirement_matches(
    r: &NodeSelectorRequirement,
    value: Option<&str>,
    what: &str,
) -> Result<(), String> {
    let values = r.values.as_deref().unwrap_or(&[]);
    let shown = match value {
        Some(v) => format!("{what} {} is \"{v}\"", r.key),
        None => format!("node has no {what} {}", r.key),
    };
    let ok = match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|w| w == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else {
                return Err(format!("{op} needs exactly one value, got {values:?}"));
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return Err(format!("{op} value \"{bound}\" is not an integer"));
            };
            match value.map(str::parse::<i64>) {
                Some(Ok(v)) => {
                    if op == "Gt" {
                        v > bound
                    } else {
                        v < bound
                    }
                }
                Some(Err(_)) => return Err(format!("{shown}, not an integer")),
                None => false,
            }
        }
        other => return Err(format!("unknown operator {other}")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{shown}; wants {}", describe_requirement(r)))
    }
}

pub fn describe_requirement(r: &NodeSelectorRequirement) -> String {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "Exists" | "DoesNotExist" => format!("{} {}", r.key, r.operator),
        "Gt" | "Lt" => format!("{} {} {}", r.key, r.operator, values.join(",")),
        op => format!("{} {op} [{}]", r.key, values.join(", ")),
    }
}
