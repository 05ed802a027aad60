//! Local volume facts measured on real filesystems: temporary directories always, and a
//! small tmpfs for the capacity, inode and read-only cases when the test may mount (root
//! with mount privileges); otherwise those are skipped with the reason printed.

use std::path::{Path, PathBuf};
use std::process::Command;

use bindlet::volume::check::{self, VolumeMode};
use bindlet::volume::{FileKind, HostFs, VolumeFacts};

/// A tmpfs mounted for one test; unmounted when dropped, whatever the test did.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `Err(reason)` when mounting is not possible here.
    fn mount(options: &str) -> Result<Tmpfs, String> {
        if !nix_is_root() {
            return Err("not running as root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (no mount privilege?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount_ro(&self) {
        let ok = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount read-only");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn nix_is_root() -> bool {
    // `id -u` rather than geteuid: no extra nix features just for a test.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn failures(f: &[check::Finding]) -> Vec<String> {
    f.iter()
        .filter(|f| !f.ok)
        .map(|f| f.message.clone())
        .collect()
}

#[test]
fn temporary_directory_passes_and_missing_or_wrong_types_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = HostFs::default();
    let p = s(dir.path());
    let facts = fs.path(&p);
    let ok = check::local_volume("data", &p, VolumeMode::Filesystem, Some(1024), &facts);
    assert!(failures(&ok).is_empty(), "{ok:?}");

    let gone = s(&dir.path().join("gone"));
    let f = check::local_volume("data", &gone, VolumeMode::Filesystem, None, &fs.path(&gone));
    assert_eq!(
        failures(&f),
        [format!("volume data: {gone} does not exist on this node")]
    );

    // Block mode wants a block device; a directory is refused.
    let f = check::local_volume("raw", &p, VolumeMode::Block, None, &facts);
    assert!(failures(&f)[0].contains("is a directory, not a block device"));

    let file = dir.path().join("f");
    std::fs::write(&file, b"x").expect("write");
    let f = check::host_path_type("cfg", &s(&file), Some("File"), &fs.path(&s(&file)));
    assert!(f.ok, "{}", f.message);
    let f = check::host_path_type("cfg", &s(&file), Some("Socket"), &fs.path(&s(&file)));
    assert!(!f.ok);
    let sock_path = dir.path().join("sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock_path).expect("socket");
    assert_eq!(fs.path(&s(&sock_path)).kind, Some(FileKind::Socket));
    let f = check::host_path_type(
        "run",
        &s(&sock_path),
        Some("Socket"),
        &fs.path(&s(&sock_path)),
    );
    assert!(f.ok, "{}", f.message);
    let f = check::host_path_type(
        "dev",
        "/dev/null",
        Some("CharDevice"),
        &fs.path("/dev/null"),
    );
    assert!(f.ok, "{}", f.message);
}

#[test]
fn small_tmpfs_short_of_space() {
    let t = match Tmpfs::mount("size=2m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("small_tmpfs_short_of_space: skipped: {why}");
            return;
        }
    };
    let p = s(t.path());
    let facts = HostFs::default().path(&p);
    let m = facts.mount.as_ref().expect("mount");
    assert_eq!(m.fs_type, "tmpfs");
    assert_eq!(m.mount_point, PathBuf::from(&p));
    let fs = facts.fs.expect("statvfs");
    assert_eq!(fs.total_bytes, 2 << 20);

    let f = check::local_volume("data", &p, VolumeMode::Filesystem, Some(10 << 20), &facts);
    assert_eq!(
        failures(&f),
        [format!(
            "volume data: {p} has 2 MiB free, the claim requests 10 MiB"
        )]
    );
    let f = check::local_volume("data", &p, VolumeMode::Filesystem, Some(1 << 20), &facts);
    assert!(failures(&f).is_empty(), "{f:?}");

    // Fill 1.5 MiB: the measurement follows.
    std::fs::write(t.path().join("blob"), vec![0u8; 3 << 19]).expect("fill");
    let facts = HostFs::default().path(&p);
    let f = check::local_volume("data", &p, VolumeMode::Filesystem, Some(1 << 20), &facts);
    assert_eq!(
        failures(&f),
        [format!(
            "volume data: {p} has 512 KiB free, the claim requests 1 MiB"
        )]
    );
}

#[test]
fn tmpfs_out_of_inodes() {
    let t = match Tmpfs::mount("size=1m,nr_inodes=8") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("tmpfs_out_of_inodes: skipped: {why}");
            return;
        }
    };
    for i in 0..16 {
        if std::fs::write(t.path().join(format!("f{i}")), b"").is_err() {
            break;
        }
    }
    let p = s(t.path());
    let facts = HostFs::default().path(&p);
    assert_eq!(facts.fs.expect("statvfs").free_inodes, 0);
    let f = check::local_volume("data", &p, VolumeMode::Filesystem, Some(1), &facts);
    assert_eq!(
        failures(&f),
        [format!("volume data: {p} has no free inodes (0 of 8)")]
    );
}

#[test]
fn read_only_tmpfs_is_not_writable() {
    let t = match Tmpfs::mount("size=1m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("read_only_tmpfs_is_not_writable: skipped: {why}");
            return;
        }
    };
    t.remount_ro();
    let p = s(t.path());
    let facts = HostFs::default().path(&p);
    assert!(facts.mount.as_ref().expect("mount").read_only);
    let f = check::local_volume("data", &p, VolumeMode::Filesystem, Some(1), &facts);
    assert_eq!(
        failures(&f),
        [format!(
            "volume data: {p} is not writable: tmpfs at {p} (tmpfs) is mounted read-only"
        )]
    );
}
