//! What kind of file system a directory is on, for the warnings a daemon
//! gives at start about where its state and shared directories are: the
//! store flushes often, which a network file system makes slow and
//! fragile, and compute nodes cannot reach a node-local memory file system.

use std::path::Path;

use crate::state_dir::StateDir;

/// The kinds of file system that matter to the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// Mounted from elsewhere (NFS, Lustre, GPFS, ...): its name.
    Network(&'static str),
    /// Held in this node's memory (tmpfs, ramfs): its name.
    Memory(&'static str),
    /// Anything else (a local disk, an overlay, ...).
    Other,
}

/// Network file systems by the magic number `statfs(2)` reports (Linux
/// `include/uapi/linux/magic.h`, and each vendor's client for the
/// out-of-tree ones).
const NETWORK: [(u32, &str); 9] = [
    (0x6969, "NFS"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS"),
    (0x00C3_6400, "CephFS"),
    (0x1983_0326, "BeeGFS"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x517B, "SMB"),
    (0x5346_414F, "AFS"),
];

/// Memory file systems by magic number.
const MEMORY: [(u32, &str); 2] = [(0x0102_1994, "tmpfs"), (0x8584_58F6, "ramfs")];

/// The kind of file system with magic number `magic`.
pub fn classify(magic: u32) -> FsKind {
    if let Some((_, name)) = NETWORK.iter().find(|(m, _)| *m == magic) {
        return FsKind::Network(name);
    }
    if let Some((_, name)) = MEMORY.iter().find(|(m, _)| *m == magic) {
        return FsKind::Memory(name);
    }
    FsKind::Other
}

/// The kind of file system `path` is on.
pub fn kind_of(path: &Path) -> nix::Result<FsKind> {
    let fs = nix::sys::statfs::statfs(path)?;
    // Every magic number fits in 32 bits; the field is wider on some
    // targets, and signed on others.
    let magic = fs.filesystem_type().0 as u64 as u32;
    Ok(classify(magic))
}

/// Warns (tracing) about a layout that works but hurts: the state
/// directory on a network file system, or, when `nodes_elsewhere` (a batch
/// scheduler whose jobs run on other nodes and read the shared directory),
/// a shared directory in this node's memory.
pub fn warn_about_layout(dir: &StateDir, nodes_elsewhere: bool) {
    let kind = |path: &Path| match kind_of(path) {
        Ok(kind) => Some(kind),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot tell the file system");
            None
        }
    };
    if let Some(FsKind::Network(fs)) = kind(dir.root()) {
        tracing::warn!(
            path = %dir.root().display(),
            file_system = fs,
            "the state directory is on a network file system: the store's frequent flushes are slow there, and its lock may not hold; put [daemon] state_dir on a disk of this node and [daemon] shared_dir on the shared file system"
        );
    }
    if nodes_elsewhere && let Some(FsKind::Memory(fs)) = kind(dir.shared_root()) {
        tracing::warn!(
            path = %dir.shared_root().display(),
            file_system = fs,
            "the shared directory is in this node's memory, but blocks run on other nodes: they cannot read its object store or write their logs there; set [daemon] shared_dir to a file system the compute nodes mount"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_memory_file_systems_are_told_apart() {
        assert_eq!(classify(0x6969), FsKind::Network("NFS"));
        assert_eq!(classify(0x0BD0_0BD0), FsKind::Network("Lustre"));
        assert_eq!(classify(0x4750_4653), FsKind::Network("GPFS"));
        assert_eq!(classify(0x0102_1994), FsKind::Memory("tmpfs"));
        // ext4 and xfs are local disks.
        assert_eq!(classify(0xEF53), FsKind::Other);
        assert_eq!(classify(0x5846_5342), FsKind::Other);
    }

    #[test]
    fn the_file_system_of_a_directory_here_can_be_told() {
        let dir = tempfile::tempdir().unwrap();
        kind_of(dir.path()).unwrap();
        assert!(kind_of(&dir.path().join("missing")).is_err());
    }
}
