//! The kubelet's PodResourcesLister v1 API (`List` only) on the wire: the messages, a
//! hand-written protobuf decoder for the few it needs, an encoder (for the simulated
//! kubelet and tests) and gRPC framing. The client that calls the socket is the agent's
//! (`bindlet::gpu::podresources::list`). A full gRPC stack (tonic, prost) would be far
//! heavier than this.
//!
//! The messages read (other fields, e.g. DRA resources, are skipped):
//!
//! ```text
//! ListPodResourcesResponse { repeated PodResources pod_resources = 1; }
//! PodResources             { string name = 1; string namespace = 2; repeated ContainerResources containers = 3; }
//! ContainerResources       { string name = 1; repeated ContainerDevices devices = 2;
//!                            repeated int64 cpu_ids = 3; repeated ContainerMemory memory = 4; }
//! ContainerDevices         { string resource_name = 1; repeated string device_ids = 2; TopologyInfo topology = 3; }
//! ContainerMemory          { string memory_type = 1; uint64 size = 2; TopologyInfo topology = 3; }
//! TopologyInfo             { repeated NUMANode nodes = 1; }
//! NUMANode                 { int64 ID = 1; }
//! ```
//!
//! Topology, CPU ids and memory feed the agent's observed NUMA placement.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// The usual place of the socket (the DaemonSet mounts its directory).
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// The gRPC method called.
pub const LIST_PATH: &str = "/v1.PodResourcesLister/List";
/// Upper bound on the answer; a node's pods fit in far less, and it bounds memory.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Nesting of (deprecated) groups skipped before the input is called malformed.
const MAX_GROUP_DEPTH: u32 = 32;

/// One pod of the answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodResources {
    pub name: String,
    pub namespace: String,
    pub containers: Vec<ContainerResources>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerResources {
    pub name: String,
    pub devices: Vec<ContainerDevices>,
    /// Exclusive CPUs (CPU manager `static`); empty for shared-pool containers.
    pub cpu_ids: Vec<i64>,
    /// Memory pinned by the memory manager (`Static`), per type.
    pub memory: Vec<ContainerMemory>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerDevices {
    pub resource_name: String,
    pub device_ids: Vec<String>,
    /// The NUMA nodes of these devices, as the device plugin reported them; empty when
    /// it reported none.
    pub numa_nodes: Vec<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerMemory {
    /// `memory`, or a hugepage size such as `hugepages-2Mi`; empty means `memory`.
    pub memory_type: String,
    pub size: u64,
    pub numa_nodes: Vec<i64>,
}

impl PodResources {
    /// The device IDs of `resource` assigned to any container of this pod.
    pub fn device_ids<'a>(&'a self, resource: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.containers
            .iter()
            .flat_map(|c| &c.devices)
            .filter(move |d| d.resource_name == resource)
            .flat_map(|d| d.device_ids.iter().map(String::as_str))
    }
}

/// Malformed protobuf.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("truncated input at byte {at}")]
    Truncated { at: usize },
    #[error("varint longer than 10 bytes at byte {at}")]
    VarintTooLong { at: usize },
    #[error("field number 0 at byte {at}")]
    FieldZero { at: usize },
    #[error("invalid wire type {wire} at byte {at}")]
    WireType { wire: u64, at: usize },
    #[error("field {field} has wire type {wire}, which its type does not allow")]
    UnexpectedWireType { field: u64, wire: u64 },
    #[error("string field {field} is not UTF-8")]
    Utf8 { field: u64 },
    #[error("unbalanced or too deeply nested group at byte {at}")]
    Group { at: usize },
}

/// Why asking the socket failed.
#[derive(Debug, Error)]
pub enum PodResourcesError {
    #[error("cannot connect to {path}: {error}")]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no answer from {path} within {after:?}")]
    Timeout { path: PathBuf, after: Duration },
    #[error("HTTP/2 error talking to {path}: {error}")]
    Http { path: PathBuf, error: String },
    #[error("{path} answered HTTP status {status}")]
    HttpStatus { path: PathBuf, status: u16 },
    #[error("{path} answered gRPC status {code}: {message}")]
    GrpcStatus {
        path: PathBuf,
        code: String,
        message: String,
    },
    #[error("malformed gRPC frame from {path}: {reason}")]
    Frame { path: PathBuf, reason: String },
    #[error("malformed answer from {path}: {error}")]
    Decode { path: PathBuf, error: DecodeError },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_SGROUP: u64 = 3;
const WIRE_EGROUP: u64 = 4;
const WIRE_I32: u64 = 5;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(DecodeError::Truncated { at: self.pos });
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::VarintTooLong { at: start })
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated { at: self.pos })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next key: (field number, wire type).
    fn key(&mut self) -> Result<(u64, u64), DecodeError> {
        let at = self.pos;
        let k = self.varint()?;
        let (field, wire) = (k >> 3, k & 7);
        if field == 0 {
            return Err(DecodeError::FieldZero { at });
        }
        if wire > WIRE_I32 {
            return Err(DecodeError::WireType { wire, at });
        }
        Ok((field, wire))
    }

    /// Skips the value of a field not read, whatever its wire type.
    fn skip(&mut self, field: u64, wire: u64, depth: u32) -> Result<(), DecodeError> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_I64 => self.take(8).map(drop),
            WIRE_LEN => {
                let n = self.varint()?;
                self.take(n).map(drop)
            }
            WIRE_I32 => self.take(4).map(drop),
            WIRE_SGROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(DecodeError::Group { at: self.pos });
                }
                loop {
                    let at = self.pos;
                    if self.done() {
                        return Err(DecodeError::Truncated { at });
                    }
                    let (f, w) = self.key()?;
                    if w == WIRE_EGROUP {
                        return if f == field {
                            Ok(())
                        } else {
                            Err(DecodeError::Group { at })
                        };
                    }
                    self.skip(f, w, depth + 1)?;
                }
            }
            // An end-group with no start-group.
            _ => Err(DecodeError::Group { at: self.pos }),
        }
    }

    /// Calls `f` for every field of the message, with the bytes of length-delimited
    /// fields among `wanted`; every other field is skipped.
    fn fields(
        self,
        wanted: &[u64],
        mut f: impl FnMut(u64, &'a [u8]) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        self.values(wanted, |field, value| match value {
            Value::Bytes(b) => f(field, b),
            Value::Varint(_) => Err(DecodeError::UnexpectedWireType {
                field,
                wire: WIRE_VARINT,
            }),
        })
    }

    /// Like [`Reader::fields`], for messages that also have varint fields among `wanted`.
    fn values(
        mut self,
        wanted: &[u64],
        mut f: impl FnMut(u64, Value<'a>) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        while !self.done() {
            let (field, wire) = self.key()?;
            if !wanted.contains(&field) {
                self.skip(field, wire, 0)?;
                continue;
            }
            match wire {
                WIRE_LEN => {
                    let n = self.varint()?;
                    f(field, Value::Bytes(self.take(n)?))?;
                }
                WIRE_VARINT => f(field, Value::Varint(self.varint()?))?,
                _ => return Err(DecodeError::UnexpectedWireType { field, wire }),
            }
        }
        Ok(())
    }
}

/// The value of a field read by [`Reader::values`].
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// A `repeated int64` field: packed (one length-delimited run of varints, proto3's
/// default) or one varint per occurrence. The cast keeps negative values (two's complement).
fn push_int64s(value: Value<'_>, out: &mut Vec<i64>) -> Result<(), DecodeError> {
    match value {
        Value::Varint(v) => out.push(v as i64),
        Value::Bytes(b) => {
            let mut r = Reader::new(b);
            while !r.done() {
                out.push(r.varint()? as i64);
            }
        }
    }
    Ok(())
}

/// `TopologyInfo { repeated NUMANode nodes = 1; }` → the node IDs.
fn decode_topology(buf: &[u8]) -> Result<Vec<i64>, DecodeError> {
    let mut nodes = Vec::new();
    Reader::new(buf).fields(&[1], |_, node| {
        Reader::new(node).values(&[1], |_, id| match id {
            Value::Varint(v) => {
                nodes.push(v as i64);
                Ok(())
            }
            Value::Bytes(_) => Err(DecodeError::UnexpectedWireType {
                field: 1,
                wire: WIRE_LEN,
            }),
        })
    })?;
    Ok(nodes)
}

fn string(field: u64, b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8 { field })
}

/// Decodes a `ListPodResourcesResponse`.
pub fn decode_list_response(buf: &[u8]) -> Result<Vec<PodResources>, DecodeError> {
    let mut pods = Vec::new();
    Reader::new(buf).fields(&[1], |_, b| {
        pods.push(decode_pod(b)?);
        Ok(())
    })?;
    Ok(pods)
}

fn decode_pod(buf: &[u8]) -> Result<PodResources, DecodeError> {
    let mut p = PodResources::default();
    Reader::new(buf).fields(&[1, 2, 3], |field, b| {
        match field {
            1 => p.name = string(field, b)?,
            2 => p.namespace = string(field, b)?,
            _ => p.containers.push(decode_container(b)?),
        }
        Ok(())
    })?;
    Ok(p)
}

fn decode_container(buf: &[u8]) -> Result<ContainerResources, DecodeError> {
    let mut c = ContainerResources::default();
    Reader::new(buf).values(&[1, 2, 3, 4], |field, value| {
        match (field, value) {
            (3, v) => push_int64s(v, &mut c.cpu_ids)?,
            (_, Value::Varint(_)) => {
                return Err(DecodeError::UnexpectedWireType {
                    field,
                    wire: WIRE_VARINT,
                });
            }
            (1, Value::Bytes(b)) => c.name = string(field, b)?,
            (2, Value::Bytes(b)) => c.devices.push(decode_devices(b)?),
            (_, Value::Bytes(b)) => c.memory.push(decode_memory(b)?),
        }
        Ok(())
    })?;
    Ok(c)
}

fn decode_devices(buf: &[u8]) -> Result<ContainerDevices, DecodeError> {
    let mut d = ContainerDevices::default();
    Reader::new(buf).fields(&[1, 2, 3], |field, b| {
        match field {
            1 => d.resource_name = string(field, b)?,
            2 => d.device_ids.push(string(field, b)?),
            _ => d.numa_nodes.extend(decode_topology(b)?),
        }
        Ok(())
    })?;
    Ok(d)
}

fn decode_memory(buf: &[u8]) -> Result<ContainerMemory, DecodeError> {
    let mut m = ContainerMemory::default();
    Reader::new(buf).values(&[1, 2, 3], |field, value| {
        match (field, value) {
            (2, Value::Varint(v)) => m.size = v,
            (1, Value::Bytes(b)) => m.memory_type = string(field, b)?,
            (3, Value::Bytes(b)) => m.numa_nodes.extend(decode_topology(b)?),
            (_, Value::Varint(_)) => {
                return Err(DecodeError::UnexpectedWireType {
                    field,
                    wire: WIRE_VARINT,
                });
            }
            (_, Value::Bytes(_)) => {
                return Err(DecodeError::UnexpectedWireType {
                    field,
                    wire: WIRE_LEN,
                });
            }
        }
        Ok(())
    })?;
    Ok(m)
}

/// Wraps a message in one uncompressed gRPC frame.
pub fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0);
    // Messages here are far below 4 GiB (bounded by MAX_ANSWER on the reading side).
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The message of a unary answer: exactly one uncompressed frame.
pub fn grpc_unframe(body: &[u8]) -> Result<&[u8], String> {
    let Some((head, rest)) = body.split_at_checked(5) else {
        return Err(format!("{} bytes, shorter than a frame header", body.len()));
    };
    if head[0] != 0 {
        return Err(format!(
            "compressed flag {} (no compression was offered)",
            head[0]
        ));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    match rest.len().cmp(&len) {
        std::cmp::Ordering::Equal => Ok(rest),
        std::cmp::Ordering::Less => Err(format!(
            "frame announces {len} bytes, {} arrived",
            rest.len()
        )),
        std::cmp::Ordering::Greater => Err(format!(
            "{} bytes after a {len}-byte frame (a unary call answers one message)",
            rest.len() - len
        )),
    }
}

/// Protobuf encoding helpers, for tests, the fake server of the integration tests and the
/// simulated kubelet's pod-resources endpoint.
pub mod encode {
    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A length-delimited field.
    pub fn bytes(field: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    pub fn devices(resource: &str, ids: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, resource.as_bytes(), &mut out);
        for id in ids {
            bytes(2, id.as_bytes(), &mut out);
        }
        out
    }

    pub fn key_varint(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v, out);
    }

    /// `TopologyInfo` with one `NUMANode` per id.
    pub fn topology(numa_nodes: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        for id in numa_nodes {
            let mut node = Vec::new();
            key_varint(1, *id as u64, &mut node);
            bytes(1, &node, &mut out);
        }
        out
    }

    /// `ContainerDevices` with its NUMA topology.
    pub fn devices_on(resource: &str, ids: &[&str], numa_nodes: &[i64]) -> Vec<u8> {
        let mut out = devices(resource, ids);
        bytes(3, &topology(numa_nodes), &mut out);
        out
    }

    /// `ContainerMemory`.
    pub fn memory(memory_type: &str, size: u64, numa_nodes: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, memory_type.as_bytes(), &mut out);
        key_varint(2, size, &mut out);
        bytes(3, &topology(numa_nodes), &mut out);
        out
    }

    /// A container with exclusive CPUs (packed, as proto3 writes them) and pinned memory.
    pub fn container_pinned(
        name: &str,
        devices: &[Vec<u8>],
        cpu_ids: &[i64],
        memory: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut out = container(name, devices);
        if !cpu_ids.is_empty() {
            let mut packed = Vec::new();
            for id in cpu_ids {
                varint(*id as u64, &mut packed);
            }
            bytes(3, &packed, &mut out);
        }
        for m in memory {
            bytes(4, m, &mut out);
        }
        out
    }

    pub fn container(name: &str, devices: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, name.as_bytes(), &mut out);
        for d in devices {
            bytes(2, d, &mut out);
        }
        out
    }

    pub fn pod(namespace: &str, name: &str, containers: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, name.as_bytes(), &mut out);
        bytes(2, namespace.as_bytes(), &mut out);
        for c in containers {
            bytes(3, c, &mut out);
        }
        out
    }

    pub fn list_response(pods: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pods {
            bytes(1, p, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;

    fn sample() -> Vec<u8> {
        list_response(&[
            pod(
                "ml",
                "train-0",
                &[container(
                    "main",
                    &[
                        devices("nvidia.com/gpu", &["GPU-a", "GPU-b"]),
                        devices("example.com/nic", &["eth1"]),
                    ],
                )],
            ),
            pod("default", "web", &[container("nginx", &[])]),
        ])
    }

    #[test]
    fn decodes_an_answer() {
        let pods = decode_list_response(&sample()).expect("decodes");
        assert_eq!(pods.len(), 2);
        assert_eq!(
            (pods[0].namespace.as_str(), pods[0].name.as_str()),
            ("ml", "train-0")
        );
        assert_eq!(
            pods[0].device_ids("nvidia.com/gpu").collect::<Vec<_>>(),
            ["GPU-a", "GPU-b"]
        );
        assert_eq!(pods[1].containers[0].name, "nginx");
        assert_eq!(pods[1].device_ids("nvidia.com/gpu").count(), 0);
        assert_eq!(decode_list_response(&[]), Ok(Vec::new()));
    }

    #[test]
    fn skips_unknown_fields_of_every_wire_type() {
        // A pod with, around its known fields, a varint, a fixed64, a string, a fixed32
        // and a group holding a nested field: what newer kubelets (DRA) or other writers
        // may add.
        let mut p = Vec::new();
        varint(9 << 3, &mut p); // field 9, varint
        varint(300, &mut p);
        bytes(1, b"p", &mut p);
        varint(10 << 3 | 1, &mut p);
        p.extend_from_slice(&[1; 8]);
        bytes(11, b"unknown", &mut p);
        varint(12 << 3 | 5, &mut p);
        p.extend_from_slice(&[2; 4]);
        varint(13 << 3 | 3, &mut p); // start group 13
        varint(1 << 3, &mut p);
        varint(7, &mut p);
        varint(13 << 3 | 4, &mut p); // end group 13
        bytes(2, b"ns", &mut p);
        let mut dev = devices("nvidia.com/gpu", &["GPU-x"]);
        bytes(3, &topology(&[1]), &mut dev); // ContainerDevices.topology
        bytes(9, b"future", &mut dev);
        let mut c = container("c", &[dev]);
        varint(3 << 3, &mut c); // ContainerResources.cpu_ids, unpacked
        varint(4, &mut c);
        bytes(5, b"dra", &mut c); // dynamic_resources: not read
        bytes(3, &c, &mut p);
        let msg = list_response(&[p]);
        let pods = decode_list_response(&msg).expect("decodes");
        assert_eq!(pods[0].name, "p");
        assert_eq!(pods[0].namespace, "ns");
        assert_eq!(
            pods[0].device_ids("nvidia.com/gpu").collect::<Vec<_>>(),
            ["GPU-x"]
        );
        assert_eq!(pods[0].containers[0].devices[0].numa_nodes, [1]);
        assert_eq!(pods[0].containers[0].cpu_ids, [4]);
    }

    #[test]
    fn decodes_topology_exclusive_cpus_and_pinned_memory() {
        let c = container_pinned(
            "main",
            &[
                devices_on("nvidia.com/gpu", &["GPU-a"], &[1]),
                devices_on("nvidia.com/gpu", &["GPU-b"], &[0, 1]),
                devices("example.com/nic", &["eth1"]),
            ],
            &[2, 3, 130],
            &[
                memory("memory", 1 << 30, &[1]),
                memory("hugepages-2Mi", 4 << 20, &[0]),
            ],
        );
        let pods = decode_list_response(&list_response(&[pod("ml", "p", &[c])])).expect("decodes");
        let c = &pods[0].containers[0];
        let numa: Vec<&[i64]> = c.devices.iter().map(|d| d.numa_nodes.as_slice()).collect();
        assert_eq!(numa, [&[1][..], &[0, 1][..], &[][..]]);
        assert_eq!(c.cpu_ids, [2, 3, 130]);
        assert_eq!(
            c.memory,
            [
                ContainerMemory {
                    memory_type: "memory".into(),
                    size: 1 << 30,
                    numa_nodes: vec![1],
                },
                ContainerMemory {
                    memory_type: "hugepages-2Mi".into(),
                    size: 4 << 20,
                    numa_nodes: vec![0],
                },
            ]
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        let good = sample();
        // Every strict prefix of a valid answer that cuts a field is an error, never a panic.
        for n in 0..good.len() {
            let _ = decode_list_response(&good[..n]);
        }
        assert!(matches!(
            decode_list_response(&good[..good.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        type Check = fn(&DecodeError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (vec![0x0a], |e| matches!(e, DecodeError::Truncated { .. })),
            (vec![0x0a, 0x05, 1], |e| {
                matches!(e, DecodeError::Truncated { .. })
            }),
            (
                vec![
                    0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                ],
                |e| matches!(e, DecodeError::Truncated { .. }),
            ),
            (vec![0x80; 11], |e| {
                matches!(e, DecodeError::VarintTooLong { .. })
            }),
            (vec![0x00, 0x00], |e| {
                matches!(e, DecodeError::FieldZero { .. })
            }),
            (vec![0x0e], |e| {
                matches!(e, DecodeError::WireType { wire: 6, .. })
            }),
            (vec![0x08, 0x01], |e| {
                matches!(e, DecodeError::UnexpectedWireType { field: 1, wire: 0 })
            }),
            (vec![0x0a, 0x03, 0x0a, 0x01, 0xff], |e| {
                matches!(e, DecodeError::Utf8 { field: 1 })
            }),
            (vec![0x1b], |e| matches!(e, DecodeError::Truncated { .. })),
            (vec![0x1b, 0x24], |e| matches!(e, DecodeError::Group { .. })),
            (vec![0x1c], |e| matches!(e, DecodeError::Group { .. })),
            (vec![0x11, 1, 2, 3], |e| {
                matches!(e, DecodeError::Truncated { .. })
            }),
            (vec![0x15, 1, 2], |e| {
                matches!(e, DecodeError::Truncated { .. })
            }),
        ];
        for (input, ok) in cases {
            let r = decode_list_response(&input);
            assert!(r.as_ref().is_err_and(ok), "{input:02x?}: {r:?}");
        }
        // Deeply nested groups stop at a limit instead of exhausting the stack.
        let deep: Vec<u8> = std::iter::repeat_n(0x1b, 10_000).collect();
        assert!(matches!(
            decode_list_response(&deep),
            Err(DecodeError::Group { .. })
        ));
    }

    #[test]
    fn frames() {
        let f = grpc_frame(b"abc");
        assert_eq!(f, [0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(grpc_unframe(&f), Ok(&b"abc"[..]));
        assert_eq!(grpc_unframe(&grpc_frame(&[])), Ok(&[][..]));
        assert!(grpc_unframe(&f[..4]).is_err());
        assert!(
            grpc_unframe(&f[..6])
                .unwrap_err()
                .contains("3 bytes, 1 arrived")
        );
        let mut two = f.clone();
        two.extend_from_slice(&f);
        assert!(grpc_unframe(&two).is_err());
        let mut compressed = f.clone();
        compressed[0] = 1;
        assert!(
            grpc_unframe(&compressed)
                .unwrap_err()
                .contains("compressed")
        );
    }
}
