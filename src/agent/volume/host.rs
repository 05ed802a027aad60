//! [`HostFs`]: the node's real filesystem behind `VolumeFacts` (`stat`,
//! `/proc/self/mountinfo`, `statvfs`, `access`). The only volume code that touches the
//! filesystem; the decisions over what it reads are in `bindlet_core::volume`.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{AccessFlags, access};

use bindlet_core::volume::facts::{
    FileKind, FsStats, PathFacts, VolumeFacts, mount_for, parse_mountinfo,
};

/// The real filesystem. `root` is where the node's `/` is visible to the agent: `/` for
/// an agent running on the host, e.g. `/host` when the DaemonSet mounts the host root there.
#[derive(Debug, Clone)]
pub struct HostFs {
    root: PathBuf,
}

impl HostFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostFs { root: root.into() }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

impl Default for HostFs {
    fn default() -> Self {
        HostFs::new("/")
    }
}

impl VolumeFacts for HostFs {
    fn path(&self, path: &str) -> PathFacts {
        let p = self.resolve(path);
        let meta = match std::fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PathFacts::default(),
            Err(e) => {
                return PathFacts {
                    error: Some(e.to_string()),
                    ..Default::default()
                };
            }
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            FileKind::Directory
        } else if ft.is_file() {
            FileKind::File
        } else if ft.is_socket() {
            FileKind::Socket
        } else if ft.is_char_device() {
            FileKind::CharDevice
        } else if ft.is_block_device() {
            FileKind::BlockDevice
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else {
            FileKind::Other
        };
        let mut facts = PathFacts {
            kind: Some(kind),
            ..Default::default()
        };
        if kind != FileKind::Directory {
            return facts;
        }
        // The mount table names canonical paths: resolve symlinks before looking it up.
        let canonical = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        facts.mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| mount_for(&canonical, &parse_mountinfo(&text)).cloned());
        match statvfs(&canonical) {
            // The statvfs field types differ by platform (u32 on some 32-bit targets).
            #[allow(clippy::unnecessary_cast)]
            Ok(s) => {
                let frag = s.fragment_size() as u64;
                facts.fs = Some(FsStats {
                    free_bytes: (s.blocks_available() as u64).saturating_mul(frag),
                    total_bytes: (s.blocks() as u64).saturating_mul(frag),
                    free_inodes: s.files_available() as u64,
                    total_inodes: s.files() as u64,
                    read_only: s.flags().contains(FsFlags::ST_RDONLY),
                });
            }
            Err(e) => facts.error = Some(format!("statvfs: {e}")),
        }
        facts.writable = access(&canonical, AccessFlags::W_OK).is_ok();
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_directory_file_and_missing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = HostFs::default();
        let path = dir.path().to_string_lossy().into_owned();
        let f = fs.path(&path);
        assert_eq!(f.kind, Some(FileKind::Directory));
        assert!(f.mount.is_some(), "a mount holds every directory");
        let stats = f.fs.expect("statvfs");
        assert!(stats.total_bytes > 0 && stats.free_bytes <= stats.total_bytes);
        assert!(f.writable);

        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert_eq!(fs.path(&file.to_string_lossy()).kind, Some(FileKind::File));
        let missing = fs.path(&dir.path().join("nope").to_string_lossy());
        assert_eq!(missing, PathFacts::default());
        assert_eq!(fs.path("/dev/null").kind, Some(FileKind::CharDevice));
    }

    #[test]
    fn host_root_prefix_is_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("mnt/disks/a")).expect("mkdir");
        let fs = HostFs::new(dir.path());
        assert_eq!(fs.path("/mnt/disks/a").kind, Some(FileKind::Directory));
        assert_eq!(fs.path("/mnt/disks/b").kind, None);
    }
}
