//! NUMA placement, decided on the node: the scheduler's predicted placement checked
//! against this node's own topology, and the placement the kubelet actually made,
//! written in the form KAI-Scheduler reads.
//!
//! KAI's rules followed here (KAI-Scheduler HEAD):
//! - Zone ids are NodeResourceTopology zone names of type `Node`, which every NRT exporter
//!   names `node-<NUMA id>` after the kernel's NUMA node (`pkg/npe/placement/placement.go`
//!   writes observed zones the same way).
//! - The annotation value is a JSON array `[{"zone": .., "amount": {resource: quantity}}]`,
//!   zones sorted as strings, resource names sorted (Go marshals maps sorted), quantities in
//!   Kubernetes' canonical decimal form (`resource.NewQuantity(n, DecimalSI).String()`).
//! - Observed placement counts, per container: each device with exactly one NUMA node
//!   (devices with none or several are skipped), each exclusive CPU through the CPU→node map,
//!   and pinned memory with exactly one NUMA node under `memory` or its hugepage type.
//!
//! All functions here are pure; reading sysfs (`numa::sysfs`), the kubelet's socket
//! (`gpu::podresources`) and the plugin that applies them (`plugins::numa`) are in the
//! agent crate.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::podresources::PodResources;
use crate::api::quantity::{self, Nanos};
use crate::api::{NumaZonePlacement, QuantityValue, Verdict, VerdictOutcome};
use crate::binding::CheckMode;
use crate::binding::verdict;
use crate::gpu::GpuSnapshot;

pub const PLUGIN: &str = "numa";
/// Written by KAI's NUMA placement exporter (`pkg/npe/consts/consts.go`), read by its
/// scheduler instead of the prediction.
pub const OBSERVED_ANNOTATION: &str = "kai.scheduler/numa-placement-observed";
/// The resource whose per-zone amount is checked against this node's GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

const UNIT: Nanos = 1_000_000_000;

/// Amounts per zone id and resource name, in nano-units.
pub type Placement = BTreeMap<String, BTreeMap<String, Nanos>>;

/// This node's NUMA topology as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumaFacts {
    /// NUMA node id → what it holds.
    pub nodes: BTreeMap<u32, NumaNode>,
    /// GPU UUID → its NUMA node, for GPUs whose PCI device reports one.
    pub gpu_nodes: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NumaNode {
    pub cpus: BTreeSet<u32>,
    /// `MemTotal` of the node, in bytes.
    pub memory_bytes: u64,
}

impl NumaFacts {
    /// Exclusive CPU id → NUMA node, for attributing pods' CPUs.
    pub fn cpu_nodes(&self) -> BTreeMap<i64, u32> {
        self.nodes
            .iter()
            .flat_map(|(id, n)| n.cpus.iter().map(move |c| (i64::from(*c), *id)))
            .collect()
    }
}

/// The NRT zone id of NUMA node `id`.
pub fn zone_id(id: u32) -> String {
    format!("node-{id}")
}

/// The NUMA node of an NRT zone id (`node-3` → 3).
pub fn parse_zone_id(zone: &str) -> Option<u32> {
    let digits = zone.strip_prefix("node-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What each zone of this node holds for the resources checked: CPUs, memory, and the
/// healthy GPUs whose NUMA node is known. Other resources are not known here.
pub fn capacity(facts: &NumaFacts, gpus: Option<&GpuSnapshot>) -> Placement {
    let mut out = Placement::new();
    for (id, node) in &facts.nodes {
        let zone = out.entry(zone_id(*id)).or_default();
        zone.insert("cpu".into(), node.cpus.len() as Nanos * UNIT);
        zone.insert("memory".into(), Nanos::from(node.memory_bytes) * UNIT);
        if gpus.is_some() {
            zone.insert(GPU_RESOURCE.into(), 0);
        }
    }
    for g in gpus.into_iter().flat_map(GpuSnapshot::healthy) {
        if let Some(node) = facts.gpu_nodes.get(&g.uuid) {
            *out.entry(zone_id(*node))
                .or_default()
                .entry(GPU_RESOURCE.into())
                .or_default() += UNIT;
        }
    }
    out
}

/// The placement the kubelet made for one pod, as KAI's exporter computes it; empty when
/// the pod holds nothing with a single known NUMA node.
pub fn observed(pod: &PodResources, cpu_nodes: &BTreeMap<i64, u32>) -> Placement {
    let mut out = Placement::new();
    let mut add = |node: i64, resource: &str, n: Nanos| {
        if n == 0 || node < 0 {
            return;
        }
        *out.entry(format!("node-{node}"))
            .or_default()
            .entry(resource.to_string())
            .or_default() += n;
    };
    for c in &pod.containers {
        for d in &c.devices {
            if let [node] = d.numa_nodes[..] {
                add(node, &d.resource_name, d.device_ids.len() as Nanos * UNIT);
            }
        }
        for cpu in &c.cpu_ids {
            if let Some(node) = cpu_nodes.get(cpu) {
                add(i64::from(*node), "cpu", UNIT);
            }
        }
        for m in &c.memory {
            if let [node] = m.numa_nodes[..] {
                let kind = if m.memory_type.is_empty() {
                    "memory"
                } else {
                    m.memory_type.as_str()
                };
                add(node, kind, Nanos::from(m.size) * UNIT);
            }
        }
    }
    out
}

/// What the pods of a pod-resources answer other than `(namespace, name)` hold per zone.
pub fn used_by_others(
    answer: &[PodResources],
    namespace: &str,
    name: &str,
    cpu_nodes: &BTreeMap<i64, u32>,
) -> Placement {
    let mut out = Placement::new();
    for p in answer
        .iter()
        .filter(|p| !(p.namespace == namespace && p.name == name))
    {
        for (zone, amounts) in observed(p, cpu_nodes) {
            let z = out.entry(zone).or_default();
            for (res, n) in amounts {
                *z.entry(res).or_default() += n;
            }
        }
    }
    out
}

/// The annotation value KAI's scheduler reads (see the module comment for the format).
pub fn annotation_value(placement: &Placement) -> String {
    let zones: Vec<NumaZonePlacement> = placement
        .iter()
        .map(|(zone, amounts)| NumaZonePlacement {
            zone: zone.clone(),
            amount: amounts
                .iter()
                .map(|(r, n)| (r.clone(), QuantityValue::String(canonical_decimal(*n))))
                .collect(),
        })
        .collect();
    // A Vec of plain structs with string maps cannot fail to serialize.
    serde_json::to_string(&zones).unwrap_or_default()
}

/// Kubernetes' canonical DecimalSI form of a quantity: an integer mantissa with the
/// largest suffix (k, M, G, T, P, E) that keeps it exact; `m`/`u`/`n` below one unit.
pub fn canonical_decimal(nanos: Nanos) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let mut mantissa = nanos.abs();
    if mantissa == 0 {
        return "0".into();
    }
    // Exponent of ten relative to nano-units: start at 10^-9.
    let mut exp: i32 = -9;
    while mantissa % 1000 == 0 && exp < 18 {
        mantissa /= 1000;
        exp += 3;
    }
    let suffix = match exp {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "E",
    };
    format!("{sign}{mantissa}{suffix}")
}

/// Why the prediction cannot be checked at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverifiable {
    /// The node's topology could not be read.
    Topology(String),
}

/// What the verdicts need besides the prediction.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    /// `Err`: the topology could not be read (the reason).
    pub facts: Result<&'a NumaFacts, &'a str>,
    /// The node's GPU probe, when one ran.
    pub gpus: Option<&'a GpuSnapshot>,
    /// What other pods hold per zone; `Err`: the kubelet's answer is missing (the reason),
    /// so free amounts are taken as the zone's whole capacity.
    pub used: Result<&'a Placement, &'a str>,
}

/// Checks a predicted placement on this node: every zone exists, and every amount the
/// node can measure (CPUs, memory, GPUs) fits what the zone has free. Amounts of other
/// resources are listed as not checked.
pub fn verify(
    predicted: &[NumaZonePlacement],
    view: &NodeView<'_>,
    mode: CheckMode,
) -> Vec<Verdict> {
    if mode == CheckMode::Off || predicted.is_empty() {
        return Vec::new();
    }
    let bad = if mode == CheckMode::Warn {
        VerdictOutcome::Warn
    } else {
        VerdictOutcome::Fail
    };
    let facts = match view.facts {
        Ok(f) => f,
        Err(why) => {
            return vec![verdict(
                PLUGIN,
                "topology",
                bad,
                format!("cannot check the predicted NUMA placement: {why}"),
            )];
        }
    };
    let known: Vec<String> = facts.nodes.keys().map(|n| zone_id(*n)).collect();
    let missing: Vec<&str> = predicted
        .iter()
        .map(|z| z.zone.as_str())
        .filter(|z| parse_zone_id(z).is_none_or(|n| !facts.nodes.contains_key(&n)))
        .collect();
    if !missing.is_empty() {
        return vec![verdict(
            PLUGIN,
            "zones",
            bad,
            format!(
                "predicted NUMA zone(s) {} do not exist on this node (it has {})",
                missing.join(", "),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        )];
    }
    let capacity = capacity(facts, view.gpus);
    let empty = Placement::new();
    let used = view.used.as_ref().copied().unwrap_or(&empty);
    let mut short = Vec::new();
    let mut fits = Vec::new();
    let mut unchecked = BTreeSet::new();
    let mut invalid = Vec::new();
    for zone in predicted {
        for (resource, amount) in &zone.amount {
            let want = match quantity::parse(&amount.to_quantity_string()) {
                Ok(n) => n,
                Err(e) => {
                    invalid.push(format!("{} {resource}: {e}", zone.zone));
                    continue;
                }
            };
            let Some(has) = capacity.get(&zone.zone).and_then(|z| z.get(resource)) else {
                unchecked.insert(resource.clone());
                continue;
            };
            let held = used
                .get(&zone.zone)
                .and_then(|z| z.get(resource))
                .copied()
                .unwrap_or(0);
            let free = has.saturating_sub(held).max(0);
            let figures = format!(
                "{} {resource}: predicted {}, free {} of {}",
                zone.zone,
                quantity::format(resource, want),
                quantity::format(resource, free),
                quantity::format(resource, *has)
            );
            if want > free {
                short.push(figures);
            } else {
                fits.push(figures);
            }
        }
    }
    let mut note = String::new();
    if let Err(why) = view.used {
        note.push_str(&format!(
            "; what other pods hold is unknown ({why}), so free is the zone's capacity"
        ));
    }
    if !unchecked.is_empty() {
        note.push_str(&format!(
            "; not measured on this node: {}",
            unchecked.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if !invalid.is_empty() {
        return vec![verdict(
            PLUGIN,
            "amounts",
            bad,
            format!("invalid predicted amounts: {}", invalid.join("; ")),
        )];
    }
    if !short.is_empty() {
        return vec![verdict(
            PLUGIN,
            "amounts",
            bad,
            format!(
                "predicted NUMA placement does not fit this node: {}{note}",
                short.join("; ")
            ),
        )];
    }
    vec![verdict(
        PLUGIN,
        "amounts",
        VerdictOutcome::Pass,
        format!(
            "predicted NUMA placement fits: {}{note}",
            if fits.is_empty() {
                "nothing measurable predicted".to_string()
            } else {
                fits.join("; ")
            }
        ),
    )]
}

#[cfg(test)]
mod tests;
