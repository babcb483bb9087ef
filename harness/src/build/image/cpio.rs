//! A reproducible cpio "newc" writer (the format the kernel unpacks an initramfs from).
//!
//! Hand-written on purpose: the `cpio` crate (0.4, checked with `cargo info cpio`) writes one
//! entry at a time from caller-filled headers; ordering, normalised metadata, inode numbering,
//! implied parent directories and the directory walk would all still be ours, and the header
//! itself is thirteen hex fields. Output depends only on the entries: they are written sorted
//! by path, with mtime 0, uid/gid 0, inode numbers counted from 1 in that order, then the
//! `TRAILER!!!` record.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Permission bits only; the file type comes from `kind`.
    perm: u32,
    kind: Kind,
}

/// An archive being assembled. Paths are relative to the image root (`bin/busybox`); adding
/// an entry adds its missing parent directories (0755). Adding a path twice replaces it.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Archive::default()
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> Result<()> {
        self.insert(path, perm, Kind::Dir)
    }

    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<()> {
        if u32::try_from(data.len()).is_err() {
            bail!("{path}: {} bytes is too large for a newc archive", data.len());
        }
        self.insert(path, perm, Kind::File(data))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, 0o777, Kind::Symlink(target.to_string()))
    }

    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.insert(path, perm, Kind::CharDev { major, minor })
    }

    /// Adds the contents of a host directory (not the directory itself) under `dest`
    /// (`""` for the root): directories, regular files and symlinks, keeping permission bits.
    pub fn add_tree(&mut self, host_dir: &Path, dest: &str) -> Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(host_dir)
            .with_context(|| format!("reading directory {}", host_dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading directory {}", host_dir.display()))?;
        names.sort();
        for name in names {
            let host = host_dir.join(&name);
            let Some(name) = name.to_str() else {
                bail!("{}: file name is not UTF-8", host.display());
            };
            let path = if dest.is_empty() { name.to_string() } else { format!("{dest}/{name}") };
            let meta = std::fs::symlink_metadata(&host).with_context(|| format!("stat {}", host.display()))?;
            use std::os::unix::fs::PermissionsExt;
            let perm = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                self.dir(&path, perm)?;
                self.add_tree(&host, &path)?;
            } else if meta.is_file() {
                let data = std::fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
                self.file(&path, perm, data)?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&host).with_context(|| format!("readlink {}", host.display()))?;
                let Some(target) = target.to_str() else {
                    bail!("{}: symlink target is not UTF-8", host.display());
                };
                self.symlink(&path, target)?;
            } else {
                bail!("{}: only directories, regular files and symlinks can be packed", host.display());
            }
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, perm: u32, kind: Kind) -> Result<()> {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") || path.contains('\0') {
            bail!("invalid archive path {path:?}");
        }
        let mut parent = path;
        while let Some((dir, _)) = parent.rsplit_once('/') {
            match self.entries.get(dir) {
                Some(Entry { kind: Kind::Dir, .. }) => {}
                Some(_) => bail!("{path}: parent {dir} is not a directory"),
                None => {
                    self.entries.insert(dir.to_string(), Entry { perm: 0o755, kind: Kind::Dir });
                }
            }
            parent = dir;
        }
        self.entries.insert(path.to_string(), Entry { perm: perm & 0o7777, kind });
        Ok(())
    }

    /// Writes the archive. Sorting by path puts every directory before its contents, which
    /// the kernel's unpacker needs.
    pub fn write_to<W: Write>(&self, mut out: W) -> io::Result<()> {
        let mut offset = 0usize;
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(index + 1).map_err(|_| io::Error::other("too many archive entries"))?;
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &entry.kind {
                Kind::Dir => (S_IFDIR | entry.perm, 2, &[], (0, 0)),
                Kind::File(data) => (S_IFREG | entry.perm, 1, data, (0, 0)),
                Kind::Symlink(target) => (S_IFLNK | entry.perm, 1, target.as_bytes(), (0, 0)),
                Kind::CharDev { major, minor } => (S_IFCHR | entry.perm, 1, &[], (*major, *minor)),
            };
            offset += write_record(&mut out, offset, ino, mode, nlink, rdev, path, data)?;
        }
        offset += write_record(&mut out, offset, 0, 0, 1, (0, 0), TRAILER, &[])?;
        // Pad the whole archive to 512 bytes like cpio(1) does; the kernel ignores the zeros.
        out.write_all(&vec![0; offset.next_multiple_of(512) - offset])?;
        Ok(())
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail, and entry counts beyond u32 are impossible in memory.
        self.write_to(&mut out).expect("writing a cpio archive to memory");
        out
    }
}

/// Writes one header + name + data with 4-byte padding; returns the bytes written.
#[allow(clippy::too_many_arguments)]
fn write_record<W: Write>(
    out: &mut W,
    offset: usize,
    ino: u32,
    mode: u32,
    nlink: u32,
    (rdev_major, rdev_minor): (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<usize> {
    let namesize = name.len() + 1;
    let filesize = u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name}: too large")))?;
    let header = format!(
        "{MAGIC}{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{filesize:08x}\
         {devmajor:08x}{devminor:08x}{rdev_major:08x}{rdev_minor:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        devmajor = 0,
        devminor = 0,
        check = 0,
    );
    let mut n = 0;
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    n += header.len() + namesize;
    let pad = pad4(offset + n);
    out.write_all(&[0; 3][..pad])?;
    n += pad;
    out.write_all(data)?;
    n += data.len();
    let pad = pad4(offset + n);
    out.write_all(&[0; 3][..pad])?;
    Ok(n + pad)
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_entry_is_byte_exact() {
        let mut a = Archive::new();
        a.file("init", 0o755, b"hi\n".to_vec()).unwrap();
        let bytes = a.to_bytes();
        let expected_header = "070701\
            00000001\
            000081ed\
            00000000\
            00000000\
            00000001\
            00000000\
            00000003\
            00000000\
            00000000\
            00000000\
            00000000\
            00000005\
            00000000";
        assert_eq!(&bytes[..110], expected_header.as_bytes());
        // name "init\0" ends at 115, padded to 116; data "hi\n" padded to 120.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..120], b"hi\n\0");
        assert_eq!(&bytes[120..126], b"070701");
        assert_eq!(&bytes[120 + 110..120 + 110 + 11], b"TRAILER!!!\0");
        assert_eq!(bytes.len(), 512);
    }

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("bin/busybox", 0o755, vec![0x7f, b'E', b'L', b'F']).unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.char_dev("dev/null", 0o666, 1, 3).unwrap();
        a.dir("tmp", 0o1777).unwrap();
        a.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        a
    }

    #[test]
    fn output_is_deterministic_and_order_independent() {
        let mut reversed = Archive::new();
        reversed.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        reversed.dir("tmp", 0o1777).unwrap();
        reversed.char_dev("dev/null", 0o666, 1, 3).unwrap();
        reversed.char_dev("dev/console", 0o600, 5, 1).unwrap();
        reversed.symlink("bin/sh", "busybox").unwrap();
        reversed.file("bin/busybox", 0o755, vec![0x7f, b'E', b'L', b'F']).unwrap();
        assert_eq!(sample().to_bytes(), sample().to_bytes());
        assert_eq!(sample().to_bytes(), reversed.to_bytes());
    }

    #[test]
    fn bad_paths_are_rejected() {
        let mut a = Archive::new();
        for bad in ["", "/", "a//b", "a/../b", "./a", "a\0b"] {
            assert!(a.file(bad, 0o644, vec![]).is_err(), "{bad:?}");
        }
        a.file("f", 0o644, vec![]).unwrap();
        assert!(a.file("f/g", 0o644, vec![]).is_err());
    }

    #[test]
    fn add_tree_packs_dirs_files_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib/modules/6.12.117/kernel")).unwrap();
        std::fs::write(dir.path().join("lib/modules/6.12.117/modules.dep"), "x\n").unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.path().join("lib/modules/6.12.117/build")).unwrap();
        let mut a = Archive::new();
        a.add_tree(dir.path(), "").unwrap();
        let names: Vec<&str> = a.entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/modules",
                "lib/modules/6.12.117",
                "lib/modules/6.12.117/build",
                "lib/modules/6.12.117/kernel",
                "lib/modules/6.12.117/modules.dep"
            ]
        );
        assert_eq!(a.entries["lib/modules/6.12.117/build"].kind, Kind::Symlink("/nowhere".into()));
    }

    /// GNU cpio (if installed) reads the archive back with the types and names we wrote.
    #[test]
    fn gnu_cpio_lists_the_archive() {
        if which::which("cpio").is_err() {
            eprintln!("cpio not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, sample().to_bytes()).unwrap();
        let out = std::process::Command::new("cpio").args(["-itv", "--quiet", "-F"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 8, "{listing}");
        let expect = [
            ("drwxr-xr-x", "bin"),
            ("-rwxr-xr-x", "bin/busybox"),
            ("lrwxrwxrwx", "bin/sh -> busybox"),
            ("drwxr-xr-x", "dev"),
            ("crw-------", "dev/console"),
            ("crw-rw-rw-", "dev/null"),
            ("-rwxr-xr-x", "init"),
            ("drwxrwxrwt", "tmp"),
        ];
        for (line, (mode, name)) in lines.iter().zip(expect) {
            assert!(line.starts_with(mode) && line.ends_with(name), "{line:?} vs {mode} {name}");
        }
    }
}
