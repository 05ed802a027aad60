//! Pure checks over [`PathFacts`]: each finding names the volume, the check and what was
//! measured, e.g. `volume data: /mnt/disks/ssd1 has 3.1 GiB free, the claim requests 10 GiB`.

use super::facts::{FileKind, PathFacts};
use super::quantity::{format_bytes, format_count};

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub message: String,
}

impl Finding {
    fn ok(check: &'static str, message: String) -> Self {
        Finding {
            check,
            ok: true,
            message,
        }
    }
    fn bad(check: &'static str, message: String) -> Self {
        Finding {
            check,
            ok: false,
            message,
        }
    }
}

/// `volumeMode` of a claim or volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeMode {
    Filesystem,
    Block,
}

impl VolumeMode {
    /// Kubernetes defaults an unset mode to Filesystem.
    pub fn parse(mode: Option<&str>) -> Self {
        match mode {
            Some("Block") => VolumeMode::Block,
            _ => VolumeMode::Filesystem,
        }
    }
}

/// Checks the node-local path of a `local` or `hostPath` PersistentVolume. Stops at the
/// first structural problem (missing, wrong type, not mounted): later checks would only
/// repeat it.
pub fn local_volume(
    volume: &str,
    path: &str,
    mode: VolumeMode,
    requested: Option<u64>,
    facts: &PathFacts,
) -> Vec<Finding> {
    let head = format!("volume {volume}: {path}");
    let Some(kind) = facts.kind else {
        let why = match &facts.error {
            Some(e) => format!("{head} cannot be inspected: {e}"),
            None => format!("{head} does not exist on this node"),
        };
        return vec![Finding::bad("local-path", why)];
    };
    if mode == VolumeMode::Block {
        return vec![if kind == FileKind::BlockDevice {
            Finding::ok("local-path", format!("{head} is a block device"))
        } else {
            Finding::bad(
                "local-path",
                format!(
                    "{head} is {}, not a block device (volumeMode Block)",
                    kind.describe()
                ),
            )
        }];
    }
    if kind != FileKind::Directory {
        return vec![Finding::bad(
            "local-path",
            format!("{head} is {}, not a directory", kind.describe()),
        )];
    }
    let mut out = Vec::new();
    let Some(mount) = &facts.mount else {
        return vec![Finding::bad(
            "mount",
            format!("{head} is on no filesystem in the mount table"),
        )];
    };
    let on = format!(
        "{} at {} ({})",
        mount.fs_type,
        mount.mount_point.display(),
        mount.source
    );
    let Some(fs) = facts.fs else {
        let e = facts.error.as_deref().unwrap_or("no statvfs answer");
        return vec![Finding::bad(
            "mount",
            format!("{head} on {on} cannot be measured: {e}"),
        )];
    };
    if mount.read_only || fs.read_only {
        return vec![Finding::bad(
            "writable",
            format!("{head} is not writable: {on} is mounted read-only"),
        )];
    }
    if !facts.writable {
        return vec![Finding::bad(
            "writable",
            format!("{head} on {on} is not writable by the agent (access W_OK)"),
        )];
    }
    out.push(Finding::ok(
        "writable",
        format!("{head} is a writable directory on {on}"),
    ));
    let free = format_bytes(fs.free_bytes);
    out.push(match requested {
        Some(req) if fs.free_bytes < req => Finding::bad(
            "free-space",
            format!(
                "{head} has {free} free, the claim requests {}",
                format_bytes(req)
            ),
        ),
        Some(req) => Finding::ok(
            "free-space",
            format!(
                "{head} has {free} free, the claim requests {}",
                format_bytes(req)
            ),
        ),
        None => Finding::ok(
            "free-space",
            format!("{head} has {free} free (the claim requests no size)"),
        ),
    });
    out.push(if fs.total_inodes == 0 {
        Finding::ok(
            "free-inodes",
            format!("{head}: {} does not count inodes", mount.fs_type),
        )
    } else if fs.free_inodes == 0 {
        Finding::bad(
            "free-inodes",
            format!(
                "{head} has no free inodes (0 of {})",
                format_count(fs.total_inodes)
            ),
        )
    } else {
        Finding::ok(
            "free-inodes",
            format!(
                "{head} has {} of {} inodes free",
                format_count(fs.free_inodes),
                format_count(fs.total_inodes)
            ),
        )
    });
    out
}

/// Checks an inline `hostPath` volume's declared `type` the way the kubelet will.
pub fn host_path_type(volume: &str, path: &str, type_: Option<&str>, facts: &PathFacts) -> Finding {
    let t = type_.unwrap_or("");
    let head = format!("volume {volume}: hostPath {path}");
    let want = match t {
        "" => {
            return Finding::ok(
                "host-path",
                format!("{head} has no type: the kubelet checks nothing"),
            );
        }
        "DirectoryOrCreate" | "FileOrCreate" => {
            let state = match facts.kind {
                Some(k) => format!("is {}", k.describe()),
                None => "is missing and will be created".into(),
            };
            return Finding::ok("host-path", format!("{head} ({t}) {state}"));
        }
        "Directory" => FileKind::Directory,
        "File" => FileKind::File,
        "Socket" => FileKind::Socket,
        "CharDevice" => FileKind::CharDevice,
        "BlockDevice" => FileKind::BlockDevice,
        other => {
            return Finding::bad("host-path", format!("{head} has unknown type \"{other}\""));
        }
    };
    match (facts.kind, &facts.error) {
        (Some(k), _) if k == want => {
            Finding::ok("host-path", format!("{head} is {} ({t})", k.describe()))
        }
        (Some(k), _) => Finding::bad(
            "host-path",
            format!("{head} is {}, the pod requires type {t}", k.describe()),
        ),
        (None, Some(e)) => Finding::bad("host-path", format!("{head} cannot be inspected: {e}")),
        (None, None) => Finding::bad(
            "host-path",
            format!("{head} does not exist on this node (type {t})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::facts::{FsStats, MountEntry};
    use std::path::PathBuf;

    const GIB: u64 = 1 << 30;

    fn dir(free: u64, free_inodes: u64, ro: bool) -> PathFacts {
        PathFacts {
            kind: Some(FileKind::Directory),
            error: None,
            mount: Some(MountEntry {
                mount_point: PathBuf::from("/mnt/disks/ssd1"),
                fs_type: "xfs".into(),
                source: "/dev/sdb".into(),
                read_only: ro,
            }),
            fs: Some(FsStats {
                free_bytes: free,
                total_bytes: 100 * GIB,
                free_inodes,
                total_inodes: 1000,
                read_only: ro,
            }),
            writable: !ro,
        }
    }

    fn failed(f: &[Finding]) -> Vec<(&'static str, String)> {
        f.iter()
            .filter(|f| !f.ok)
            .map(|f| (f.check, f.message.clone()))
            .collect()
    }

    #[test]
    fn local_volume_table() {
        let fs = VolumeMode::Filesystem;
        let p = "/mnt/disks/ssd1";
        let ok = local_volume("data", p, fs, Some(10 * GIB), &dir(31 * GIB, 500, false));
        assert!(failed(&ok).is_empty(), "{ok:?}");
        assert_eq!(ok.len(), 3);
        assert_eq!(
            ok[1].message,
            "volume data: /mnt/disks/ssd1 has 31 GiB free, the claim requests 10 GiB"
        );

        let short = local_volume(
            "data",
            p,
            fs,
            Some(10 * GIB),
            &dir(3_328_599_654, 500, false),
        );
        assert_eq!(
            failed(&short),
            [(
                "free-space",
                "volume data: /mnt/disks/ssd1 has 3.1 GiB free, the claim requests 10 GiB".into()
            )]
        );

        let no_inodes = local_volume("data", p, fs, None, &dir(GIB, 0, false));
        assert_eq!(failed(&no_inodes)[0].0, "free-inodes");
        assert!(failed(&no_inodes)[0].1.contains("0 of 1.0k"));

        let ro = local_volume("data", p, fs, Some(1), &dir(GIB, 5, true));
        assert_eq!(failed(&ro).len(), 1);
        assert!(failed(&ro)[0].1.contains("read-only"), "{ro:?}");

        let missing = local_volume("data", p, fs, None, &PathFacts::default());
        assert_eq!(
            failed(&missing),
            [(
                "local-path",
                "volume data: /mnt/disks/ssd1 does not exist on this node".into()
            )]
        );

        let file = PathFacts {
            kind: Some(FileKind::File),
            ..Default::default()
        };
        assert!(
            failed(&local_volume("data", p, fs, None, &file))[0]
                .1
                .contains("is a regular file, not a directory")
        );

        let block = PathFacts {
            kind: Some(FileKind::BlockDevice),
            ..Default::default()
        };
        assert!(
            failed(&local_volume(
                "raw",
                "/dev/sdb",
                VolumeMode::Block,
                None,
                &block
            ))
            .is_empty()
        );
        let b = local_volume("raw", p, VolumeMode::Block, None, &dir(GIB, 5, false));
        assert!(
            failed(&b)[0]
                .1
                .contains("is a directory, not a block device")
        );

        let mut unmounted = dir(GIB, 5, false);
        unmounted.mount = None;
        assert_eq!(
            failed(&local_volume("data", p, fs, None, &unmounted))[0].0,
            "mount"
        );
    }

    #[test]
    fn host_path_type_table() {
        let d = dir(GIB, 5, false);
        let missing = PathFacts::default();
        let sock = PathFacts {
            kind: Some(FileKind::Socket),
            ..Default::default()
        };
        let cases = [
            (None, &d, true),
            (None, &missing, true),
            (Some(""), &missing, true),
            (Some("DirectoryOrCreate"), &missing, true),
            (Some("FileOrCreate"), &d, true),
            (Some("Directory"), &d, true),
            (Some("Directory"), &missing, false),
            (Some("File"), &d, false),
            (Some("Socket"), &sock, true),
            (Some("CharDevice"), &sock, false),
            (Some("BlockDevice"), &missing, false),
            (Some("Fancy"), &d, false),
        ];
        for (t, facts, want) in cases {
            let f = host_path_type("v", "/x", t, facts);
            assert_eq!(f.ok, want, "{t:?}: {}", f.message);
        }
        assert_eq!(
            host_path_type("v", "/x", Some("File"), &d).message,
            "volume v: hostPath /x is a directory, the pod requires type File"
        );
    }
}
