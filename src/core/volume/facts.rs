//! What the node's filesystem says about a path, as plain values behind [`VolumeFacts`]:
//! the agent's `HostFs` reads the real filesystem (`stat`, `/proc/self/mountinfo`,
//! `statvfs`, `access`), tests substitute plain values. Parsing mountinfo and finding the
//! mount of a path are pure and live here.

use std::path::{Path, PathBuf};

/// The type of what a path names (symlinks followed, as the kubelet does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    File,
    Socket,
    CharDevice,
    BlockDevice,
    Fifo,
    Other,
}

impl FileKind {
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Directory => "a directory",
            FileKind::File => "a regular file",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Fifo => "a FIFO",
            FileKind::Other => "an unusual file",
        }
    }
}

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Mounted read-only (per-mount or superblock option).
    pub read_only: bool,
}

/// Capacity of the filesystem a path is on, as an unprivileged writer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Bytes available to unprivileged users (`f_bavail * f_frsize`).
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Inodes available to unprivileged users; `total_inodes == 0` means the filesystem
    /// does not count inodes (btrfs, some FUSE filesystems).
    pub free_inodes: u64,
    pub total_inodes: u64,
    pub read_only: bool,
}

/// Everything measured about one path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathFacts {
    /// `None`: nothing exists at the path.
    pub kind: Option<FileKind>,
    /// The path could not be inspected (permission, I/O error); `kind` is then `None`.
    pub error: Option<String>,
    /// The mount the path is on (directories only).
    pub mount: Option<MountEntry>,
    /// statvfs of the path (directories only).
    pub fs: Option<FsStats>,
    /// `access(W_OK)` succeeded (directories only).
    pub writable: bool,
}

/// Source of path facts.
pub trait VolumeFacts: Send + Sync {
    /// Facts about `path`, a path on the node (as written in the PV or pod spec).
    fn path(&self, path: &str) -> PathFacts;
}

/// Parses `/proc/<pid>/mountinfo` (proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let mount_point = unescape(pre.get(4)?);
            let per_mount = pre.get(5)?;
            let fs_type = post.next()?.to_string();
            let source = unescape(post.next().unwrap_or(""));
            let super_opts = post.next().unwrap_or("");
            let ro = |opts: &str| opts.split(',').any(|o| o == "ro");
            Some(MountEntry {
                mount_point: PathBuf::from(mount_point),
                fs_type,
                source,
                read_only: ro(per_mount) || ro(super_opts),
            })
        })
        .collect()
}

/// The mount that holds `path`: the longest mount point containing it; among equal ones
/// the last listed, which is the one on top.
pub fn mount_for<'a>(path: &Path, mounts: &'a [MountEntry]) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best.is_none_or(|b| {
                m.mount_point.components().count() >= b.mount_point.components().count()
            })
        {
            best = Some(m);
        }
    }
    best
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(oct) = std::str::from_utf8(&b[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 27 8:17 / /mnt/disks/ssd1 rw,noatime shared:5 - xfs /dev/sdb rw,attr2
41 27 8:33 / /mnt/disks/ro ro,relatime - ext4 /dev/sdc ro
42 27 0:50 / /mnt/my\\040disk rw - tmpfs tmpfs rw,size=1024k
43 40 0:51 / /mnt/disks/ssd1 rw - tmpfs over rw
garbage line
";

    #[test]
    fn mountinfo_parsing_and_lookup() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 6);
        assert_eq!(m[2].fs_type, "xfs");
        assert_eq!(m[2].source, "/dev/sdb");
        assert!(m[3].read_only);
        assert!(!m[2].read_only);
        assert_eq!(m[4].mount_point, PathBuf::from("/mnt/my disk"));

        let at = |p: &str| mount_for(Path::new(p), &m).map(|e| e.source.clone());
        assert_eq!(at("/var/lib/x").as_deref(), Some("/dev/sda1"));
        // Stacked mounts: the later one is on top.
        assert_eq!(at("/mnt/disks/ssd1/vol").as_deref(), Some("over"));
        // Component-wise: /mnt/disks/ssd10 is not under /mnt/disks/ssd1.
        assert_eq!(at("/mnt/disks/ssd10").as_deref(), Some("/dev/sda1"));
        assert_eq!(at("/mnt/my disk/a").as_deref(), Some("tmpfs"));
        assert!(mount_for(Path::new("relative"), &m).is_none());
    }
}
