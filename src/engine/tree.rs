//! Trees: one blob per directory, listing its entries sorted by name.
//!
//! Names are raw bytes (Unix file names need not be UTF-8). Decoding
//! validates every name, because a tree may come from a hostile or damaged
//! repository and names are later joined onto a restore target: empty names,
//! `.`, `..`, and names containing `/` or NUL are refused, as are duplicates.

use serde::{Deserialize, Serialize};

use super::id::BlobId;

/// Directories nested deeper than this are refused by every walk over a snapshot
/// (restore, check, copy, ls, diff, restore through an agent). No file system path
/// can hold them (a path is at most 4096 bytes, two per level at the least), so only
/// a hostile or damaged repository has them, and walking one must not exhaust a
/// thread's stack.
pub const MAX_DEPTH: usize = 2048;

/// The error given for a directory beyond [`MAX_DEPTH`].
#[must_use]
pub fn too_deep() -> String {
    format!("directory nested deeper than {MAX_DEPTH} levels; what it holds is not read")
}

/// Kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory (see `subtree`).
    Dir,
    /// Symbolic link (see `link_target`).
    Symlink,
    /// Block device (see `rdev`).
    BlockDev,
    /// Character device (see `rdev`).
    CharDev,
    /// Named pipe.
    Fifo,
    /// Unix socket (recorded; not recreated on restore).
    Socket,
}

/// One directory entry with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name, raw bytes.
    pub name: Vec<u8>,
    /// Kind.
    pub kind: NodeKind,
    /// Permission bits and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch (change detection only).
    pub ctime_ns: i64,
    /// Inode number at backup time (change detection and hard links).
    pub inode: u64,
    /// Device of the containing file system at backup time.
    pub dev: u64,
    /// Size in bytes (files) or 0.
    pub size: u64,
    /// Content chunks, in order (files).
    pub content: Vec<BlobId>,
    /// The directory's own tree (directories).
    pub subtree: Option<BlobId>,
    /// Link target, raw bytes (symlinks).
    pub link_target: Option<Vec<u8>>,
    /// Device number (block and character devices).
    pub rdev: u64,
    /// Set on every path of a hard-linked file: the inode-derived group key;
    /// paths sharing it are restored as hard links of one file.
    pub hardlink: Option<u64>,
    /// Extended attributes, sorted by name: POSIX ACLs (`system.posix_acl_access`,
    /// `system.posix_acl_default`), file capabilities (`security.capability`), SELinux
    /// labels (`security.selinux`), `user.*` and `trusted.*`. Empty in trees of version 1.
    pub xattrs: Vec<Xattr>,
}

/// One extended attribute of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Its name with its namespace (`user.mime_type`), raw bytes without NUL.
    pub name: Vec<u8>,
    /// Its value, raw bytes.
    pub value: Vec<u8>,
}

/// A node as trees of version 1 encode it: without extended attributes. A tree none of
/// whose nodes has any is still written so, and keeps the id it had before they were
/// recorded.
#[derive(Serialize, Deserialize)]
struct NodeV1 {
    name: Vec<u8>,
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    dev: u64,
    size: u64,
    content: Vec<BlobId>,
    subtree: Option<BlobId>,
    link_target: Option<Vec<u8>>,
    rdev: u64,
    hardlink: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct TreeV1 {
    version: u8,
    nodes: Vec<NodeV1>,
}

impl From<Node> for NodeV1 {
    fn from(n: Node) -> Self {
        NodeV1 {
            name: n.name,
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            mtime_ns: n.mtime_ns,
            ctime_ns: n.ctime_ns,
            inode: n.inode,
            dev: n.dev,
            size: n.size,
            content: n.content,
            subtree: n.subtree,
            link_target: n.link_target,
            rdev: n.rdev,
            hardlink: n.hardlink,
        }
    }
}

impl From<NodeV1> for Node {
    fn from(n: NodeV1) -> Self {
        Node {
            name: n.name,
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            mtime_ns: n.mtime_ns,
            ctime_ns: n.ctime_ns,
            inode: n.inode,
            dev: n.dev,
            size: n.size,
            content: n.content,
            subtree: n.subtree,
            link_target: n.link_target,
            rdev: n.rdev,
            hardlink: n.hardlink,
            xattrs: Vec::new(),
        }
    }
}

impl Node {
    /// A node with all metadata zero, for building trees in tests and tools.
    pub fn new(name: impl Into<Vec<u8>>, kind: NodeKind) -> Self {
        Self {
            name: name.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            dev: 0,
            size: 0,
            content: Vec::new(),
            subtree: None,
            link_target: None,
            rdev: 0,
            hardlink: None,
            xattrs: Vec::new(),
        }
    }

    /// The name for display (lossy UTF-8).
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// A directory listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Encoding version: 1, or 2 when a node has extended attributes.
    pub version: u8,
    /// Entries sorted by name bytes.
    pub nodes: Vec<Node>,
}

/// Why extended attributes, sorted by name, are not something a file system can hold:
/// an empty name, a NUL in one, a name given twice (or out of order).
///
/// # Errors
/// The first such problem.
pub fn check_xattrs(xattrs: &[Xattr]) -> Result<(), String> {
    for (i, x) in xattrs.iter().enumerate() {
        if x.name.is_empty() || x.name.contains(&0) {
            return Err("an extended attribute's name is empty or holds a NUL".into());
        }
        if i > 0 && xattrs[i - 1].name >= x.name {
            let name = String::from_utf8_lossy(&x.name);
            return Err(if xattrs[i - 1].name == x.name {
                format!("extended attribute {name} given twice")
            } else {
                format!("extended attributes out of order at {name}")
            });
        }
    }
    Ok(())
}

/// Why a name is unsafe to restore.
pub fn check_name(name: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty file name".into());
    }
    if name == b"." || name == b".." {
        return Err(format!(
            "file name `{}` is not allowed",
            String::from_utf8_lossy(name)
        ));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(format!(
            "file name `{}` contains a path separator or NUL",
            String::from_utf8_lossy(name).escape_debug()
        ));
    }
    Ok(())
}

impl Tree {
    /// Encode (sorting the nodes by name first).
    pub fn encode(mut self) -> Vec<u8> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for node in &mut self.nodes {
            node.xattrs.sort_by(|a, b| a.name.cmp(&b.name));
        }
        if self.nodes.iter().all(|n| n.xattrs.is_empty()) {
            let v1 = TreeV1 {
                version: 1,
                nodes: self.nodes.into_iter().map(NodeV1::from).collect(),
            };
            return postcard::to_stdvec(&v1).expect("trees always serialize");
        }
        self.version = 2;
        postcard::to_stdvec(&self).expect("trees always serialize")
    }

    /// Decode and validate a tree blob.
    ///
    /// # Errors
    /// A message naming the problem: undecodable bytes, unknown version,
    /// an unsafe or duplicate name, or a node missing its required field.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let undecodable = |e: postcard::Error| format!("undecodable tree: {e}");
        // The version is the first byte (a u8 is one byte in postcard).
        let t = match bytes.first() {
            Some(1) => {
                let v1: TreeV1 = postcard::from_bytes(bytes).map_err(undecodable)?;
                Tree {
                    version: 1,
                    nodes: v1.nodes.into_iter().map(Node::from).collect(),
                }
            }
            Some(2) => postcard::from_bytes::<Tree>(bytes).map_err(undecodable)?,
            Some(other) => return Err(format!("unknown tree version {other}")),
            None => return Err("undecodable tree: empty".into()),
        };
        for (i, n) in t.nodes.iter().enumerate() {
            check_name(&n.name)?;
            check_xattrs(&n.xattrs).map_err(|e| format!("`{}`: {e}", n.display_name()))?;
            if i > 0 && t.nodes[i - 1].name >= n.name {
                return Err(format!(
                    "tree entries unsorted or duplicated at `{}`",
                    n.display_name()
                ));
            }
            match n.kind {
                NodeKind::Dir if n.subtree.is_none() => {
                    return Err(format!("directory `{}` has no subtree", n.display_name()));
                }
                NodeKind::Symlink if n.link_target.is_none() => {
                    return Err(format!("symlink `{}` has no target", n.display_name()));
                }
                _ => {}
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::id::random_bytes;
    use proptest::prelude::*;

    fn arb_node() -> impl Strategy<Value = Node> {
        (
            proptest::collection::vec(1u8..=255, 1..20)
                .prop_filter("safe", |n| check_name(n).is_ok()),
            0u8..7,
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..4),
            proptest::collection::btree_map(
                proptest::collection::vec(1u8..=255, 1..12),
                proptest::collection::vec(any::<u8>(), 0..40),
                0..3,
            ),
        )
            .prop_map(|(name, k, mode, t, size, content, xattrs)| {
                let kind = [
                    NodeKind::File,
                    NodeKind::Dir,
                    NodeKind::Symlink,
                    NodeKind::BlockDev,
                    NodeKind::CharDev,
                    NodeKind::Fifo,
                    NodeKind::Socket,
                ][k as usize];
                let mut n = Node::new(name, kind);
                n.mode = mode;
                n.mtime_ns = t;
                n.size = size;
                n.content = content.into_iter().map(BlobId).collect();
                if kind == NodeKind::Dir {
                    n.subtree = Some(BlobId(random_bytes()));
                }
                if kind == NodeKind::Symlink {
                    n.link_target = Some(b"../x".to_vec());
                }
                n.xattrs = xattrs
                    .into_iter()
                    .map(|(name, value)| Xattr { name, value })
                    .collect();
                n
            })
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [&b".."[..], b".", b"", b"a/b", b"/etc", b"x\0y"] {
            let t = Tree {
                version: 1,
                nodes: vec![Node::new(bad.to_vec(), NodeKind::File)],
            };
            let raw = t.encode();
            assert!(Tree::decode(&raw).is_err(), "{bad:?} accepted");
        }
        // Extended attributes named empty, with a NUL, or twice.
        for names in [
            vec![&b""[..]],
            vec![b"user.a\0b"],
            vec![b"user.a", b"user.a"],
        ] {
            let mut node = Node::new("f", NodeKind::File);
            node.xattrs = names
                .into_iter()
                .map(|n| Xattr {
                    name: n.to_vec(),
                    value: b"v".to_vec(),
                })
                .collect();
            let t = Tree {
                version: 2,
                nodes: vec![node],
            };
            let raw = postcard::to_stdvec(&t).unwrap();
            assert!(Tree::decode(&raw).is_err(), "{t:?} accepted");
        }
        let dup = Tree {
            version: 1,
            nodes: vec![
                Node::new("a", NodeKind::File),
                Node::new("a", NodeKind::File),
            ],
        };
        assert!(Tree::decode(&postcard::to_stdvec(&dup).unwrap()).is_err());
    }

    /// Trees without extended attributes are encoded byte for byte as before they were
    /// recorded (version 1), so their ids, and deduplication against old snapshots, stay.
    #[test]
    fn version_1_encoding_is_frozen() {
        let t = Tree {
            version: 0,
            nodes: vec![Node::new("a", NodeKind::File)],
        };
        let raw = t.clone().encode();
        assert_eq!(
            hex::encode(&raw),
            format!("0101016100a403{}", "00".repeat(12))
        );
        let back = Tree::decode(&raw).unwrap();
        assert_eq!((back.version, back.nodes), (1, t.nodes));
        let mut with = Node::new("a", NodeKind::File);
        with.xattrs = vec![Xattr {
            name: b"security.capability".to_vec(),
            value: vec![1, 0, 0, 2],
        }];
        let raw = Tree {
            version: 0,
            nodes: vec![with.clone()],
        }
        .encode();
        assert_eq!(raw[0], 2);
        assert_eq!(Tree::decode(&raw).unwrap().nodes, vec![with]);
    }

    proptest! {
        #[test]
        fn tree_round_trip(nodes in proptest::collection::vec(arb_node(), 0..10)) {
            let mut nodes = nodes;
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes.dedup_by(|a, b| a.name == b.name);
            let with_xattrs = nodes.iter().any(|n| !n.xattrs.is_empty());
            let t = Tree { version: 1, nodes };
            let enc = t.clone().encode();
            let back = Tree::decode(&enc).unwrap();
            // Version 2 only where a node has extended attributes.
            prop_assert_eq!(back.version, if with_xattrs { 2 } else { 1 });
            prop_assert_eq!(back.nodes, t.nodes);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..500)) {
            let _ = Tree::decode(&data);
        }
    }
}
