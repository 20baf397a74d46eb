//! Giving a tree to the stack's user, as root, without ever leaving the tree.
//!
//! The trees handed over (the data dir above all) already belong to the user the supervisor
//! is about to become, and that user may be running code while root walks them. A walk by
//! path checks that `data/sub` is a directory, then lists `data/sub`: in between, that user
//! can swap `sub` for a symlink to `/etc`, and root then gives `/etc`'s entries away.
//!
//! So nothing here is looked up by more than one name. Each entry is opened relative to its
//! parent directory's descriptor with `O_PATH | O_NOFOLLOW` (a symlink yields the link
//! itself), and every later step uses that descriptor: `fstat` to see what it is,
//! `fchownat(fd, "", AT_EMPTY_PATH)` to change exactly that inode, and for a directory
//! `openat(fd, ".")` to list exactly that directory. Swapping a name after the open changes
//! which name the walk used, never what it changes. Besides:
//! - a symlink is changed itself, its target never;
//! - a non-directory with more than one hard link is left alone (a link to a file outside,
//!   `/etc/shadow` say, that the user could make where `fs.protected_hardlinks` is off);
//! - an entry on another device than the tree's root (a file system mounted below it) is
//!   neither changed nor entered.
//!
//! Only the root's own path is resolved as a path: it comes from the configuration, and its
//! last component is not followed either.

#![forbid(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::unistd::{Gid, Uid, fchownat};

/// Who the tree is given to: `uid` unchanged when `None`.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: Option<Uid>,
    pub gid: Gid,
}

impl Owner {
    fn has(&self, stat: &FileStat) -> bool {
        self.uid.is_none_or(|uid| uid.as_raw() == stat.st_uid) && self.gid.as_raw() == stat.st_gid
    }
}

/// Why an entry was left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A non-directory with other hard links, which may lie outside the tree.
    HardLinked,
    /// On another device than the tree's root.
    OtherDevice,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::HardLinked => "it has other hard links",
            Skip::OtherDevice => "it is on another device",
        })
    }
}

/// An entry left as it was, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: Skip,
}

/// A step of the walk that failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}", path = path.display())]
pub struct ChownError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: Errno,
}

impl ChownError {
    /// The error `action` on `path` failed with, for `map_err`.
    fn at<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Self + 'a {
        move |source| ChownError {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Gives `root` and, when it is a directory, everything below it to `owner`, never following
/// a symlink (see the module's doc). Returns the entries left alone. Entries removed while
/// the walk runs are passed over; a missing `root` is an error.
pub fn chown_tree(root: &Path, owner: Owner) -> Result<Vec<Skipped>, ChownError> {
    let fd = openat(AT_FDCWD, root, entry_flags(), Mode::empty())
        .map_err(ChownError::at("opening", root))?;
    let stat = fstat(&fd).map_err(ChownError::at("reading the status of", root))?;
    let mut walk = Walk {
        owner,
        device: stat.st_dev,
        skipped: Vec::new(),
    };
    walk.visit(&fd, &stat, &mut root.to_path_buf())?;
    Ok(walk.skipped)
}

/// How every entry is opened: the inode itself, a symlink included, without following.
fn entry_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

struct Walk {
    owner: Owner,
    device: u64,
    skipped: Vec<Skipped>,
}

impl Walk {
    /// Changes the inode `fd` holds, then what it lists when it is a directory. `path` is
    /// only for messages.
    fn visit(
        &mut self,
        fd: &OwnedFd,
        stat: &FileStat,
        path: &mut PathBuf,
    ) -> Result<(), ChownError> {
        if stat.st_dev != self.device {
            self.skip(path, Skip::OtherDevice);
            return Ok(());
        }
        let is_dir = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if !self.owner.has(stat) {
            if !is_dir && stat.st_nlink > 1 {
                self.skip(path, Skip::HardLinked);
                return Ok(());
            }
            fchownat(
                fd,
                c"",
                self.owner.uid,
                Some(self.owner.gid),
                AtFlags::AT_EMPTY_PATH,
            )
            .map_err(ChownError::at("changing the owner of", path))?;
        }
        if is_dir {
            for name in list(fd).map_err(ChownError::at("listing", path))? {
                path.push(OsStr::from_bytes(name.to_bytes()));
                let visited = self.visit_entry(fd, &name, path);
                path.pop();
                visited?;
            }
        }
        Ok(())
    }

    /// Opens `name` in the directory `parent` without following it, and visits it.
    fn visit_entry(
        &mut self,
        parent: &OwnedFd,
        name: &CStr,
        path: &mut PathBuf,
    ) -> Result<(), ChownError> {
        let fd = match openat(parent, name, entry_flags(), Mode::empty()) {
            Ok(fd) => fd,
            // Removed since it was listed: nothing left to give.
            Err(Errno::ENOENT) => return Ok(()),
            Err(source) => return Err(ChownError::at("opening", path)(source)),
        };
        let stat = fstat(&fd).map_err(ChownError::at("reading the status of", path))?;
        self.visit(&fd, &stat, path)
    }

    fn skip(&mut self, path: &Path, why: Skip) {
        self.skipped.push(Skipped {
            path: path.to_path_buf(),
            why,
        });
    }
}

/// The names in the directory `dir` holds (an `O_PATH` descriptor), but `.` and `..`.
fn list(dir: &OwnedFd) -> nix::Result<Vec<CString>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut names = Vec::new();
    for entry in Dir::openat(dir, c".", flags, Mode::empty())? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    use nix::fcntl::{RenameFlags, renameat2};
    use nix::unistd::mkdtemp;

    use super::*;

    /// The user the trees are given to in these tests (need not exist: `nobody` on Debian).
    const TARGET: Owner = Owner {
        uid: Some(Uid::from_raw(65534)),
        gid: Gid::from_raw(65534),
    };
    /// Walks run while another thread swaps a subdirectory for a link.
    const RACE_WALKS: usize = 3000;

    /// Changing owners needs root; CI runs as root. Says so and returns false otherwise.
    fn root(test: &str) -> bool {
        let root = Uid::effective().is_root();
        if !root {
            eprintln!("skipped {test}: changing owners needs root");
        }
        root
    }

    /// A directory under the temp dir, owned by root, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Self {
            Self(mkdtemp(&std::env::temp_dir().join("securely-chown-XXXXXX")).expect("mkdtemp"))
        }
        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Stands for `/etc`: root's files outside the tree.
    fn victim() -> Scratch {
        let victim = Scratch::new();
        fs::write(victim.join("passwd"), "root:x:0:0\n").unwrap();
        fs::write(victim.join("shadow"), "root:*:1:0\n").unwrap();
        fs::create_dir(victim.join("conf.d")).unwrap();
        fs::write(victim.join("conf.d/a.conf"), "a\n").unwrap();
        victim
    }

    /// `(uid, gid)` of `path` itself and of everything below it, links not followed.
    fn owners(path: &Path) -> Vec<(PathBuf, u32, u32)> {
        let meta = fs::symlink_metadata(path).unwrap();
        let mut all = vec![(path.to_path_buf(), meta.uid(), meta.gid())];
        if meta.is_dir() {
            for entry in fs::read_dir(path).unwrap() {
                all.extend(owners(&entry.unwrap().path()));
            }
        }
        all
    }

    fn assert_all_root(path: &Path) {
        for (path, uid, gid) in owners(path) {
            assert_eq!((uid, gid), (0, 0), "{} changed owner", path.display());
        }
    }

    fn assert_all_target(path: &Path) {
        for (path, uid, gid) in owners(path) {
            assert_eq!(
                (uid, gid),
                (65534, 65534),
                "{} not given away",
                path.display()
            );
        }
    }

    #[test]
    fn gives_files_dirs_and_links_themselves_never_link_targets() {
        if !root("gives_files_dirs_and_links_themselves_never_link_targets") {
            return;
        }
        let victim = victim();
        let data = Scratch::new();
        fs::write(data.join("conf"), "x").unwrap();
        fs::create_dir_all(data.join("db/blobs")).unwrap();
        fs::write(data.join("db/blobs/1"), "x").unwrap();
        symlink(&victim.0, data.join("to-dir")).unwrap();
        symlink(victim.join("passwd"), data.join("db/to-file")).unwrap();
        symlink(data.join("missing"), data.join("dangling")).unwrap();

        let skipped = chown_tree(&data.0, TARGET).unwrap();

        assert_eq!(skipped, []);
        assert_all_target(&data.0);
        assert_eq!(owners(&data.0).len(), 8, "every entry was looked at");
        assert_all_root(&victim.0);
    }

    #[test]
    fn a_root_that_is_a_link_or_a_file_is_changed_itself() {
        if !root("a_root_that_is_a_link_or_a_file_is_changed_itself") {
            return;
        }
        let victim = victim();
        let run = Scratch::new();
        symlink(&victim.0, run.join("link")).unwrap();
        fs::write(run.join("securely.pid"), "1\n").unwrap();

        chown_tree(&run.join("link"), TARGET).unwrap();
        chown_tree(&run.join("securely.pid"), TARGET).unwrap();

        assert_all_target(&run.join("link"));
        assert_all_target(&run.join("securely.pid"));
        assert_all_root(&victim.0);
        let missing = chown_tree(&run.join("missing"), TARGET).unwrap_err();
        assert_eq!(missing.source, Errno::ENOENT);
    }

    #[test]
    fn hard_links_are_left_alone() {
        if !root("hard_links_are_left_alone") {
            return;
        }
        let victim = victim();
        let data = Scratch::new();
        fs::hard_link(victim.join("shadow"), data.join("shadow")).unwrap();
        fs::write(data.join("own"), "x").unwrap();

        let skipped = chown_tree(&data.0, TARGET).unwrap();

        let why = Skip::HardLinked;
        assert_eq!(
            skipped,
            [Skipped {
                path: data.join("shadow"),
                why
            }]
        );
        assert_all_root(&victim.0);
        assert_eq!(fs::metadata(data.join("own")).unwrap().uid(), 65534);
    }

    /// Unmounts on drop, before the scratch dir it is in goes.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn another_device_below_is_neither_changed_nor_entered() {
        let test = "another_device_below_is_neither_changed_nor_entered";
        if !root(test) {
            return;
        }
        let data = Scratch::new();
        let mount = data.join("mnt");
        fs::create_dir(&mount).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&mount)
            .status();
        if !mounted.is_ok_and(|status| status.success()) {
            eprintln!("skipped {test}: cannot mount a tmpfs here");
            return;
        }
        let _mounted = Mounted(mount.clone());
        fs::write(mount.join("inside"), "x").unwrap();

        let skipped = chown_tree(&data.0, TARGET).unwrap();

        assert_eq!(
            skipped,
            [Skipped {
                path: mount.clone(),
                why: Skip::OtherDevice
            }]
        );
        assert_all_root(&mount);
        assert_eq!(fs::metadata(&data.0).unwrap().uid(), 65534);
    }

    /// The attack this module closes: the tree's owner swaps a subdirectory for a link to a
    /// directory outside (atomically, `RENAME_EXCHANGE`, so the name never goes missing)
    /// over and over while root walks the tree. The walk by path this module replaced fails
    /// it in most runs.
    #[test]
    fn a_subdirectory_swapped_for_a_link_never_leads_outside() {
        if !root("a_subdirectory_swapped_for_a_link_never_leads_outside") {
            return;
        }
        let victim = victim();
        let data = Scratch::new();
        // `sub` holds the names the victim holds, so that a chown by path of `sub/NAME`
        // reaches the victim's NAME whenever `sub` is the link at that moment.
        fs::create_dir_all(data.join("sub/conf.d")).unwrap();
        for name in ["passwd", "shadow", "conf.d/a.conf"] {
            fs::write(data.join("sub").join(name), "x").unwrap();
        }
        symlink(&victim.0, data.join("swap")).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let swapper = thread::spawn({
            let (stop, a, b) = (stop.clone(), data.join("sub"), data.join("swap"));
            move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE).unwrap();
                    swaps += 1;
                }
                swaps
            }
        });
        for _ in 0..RACE_WALKS {
            chown_tree(&data.0, TARGET).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();

        assert!(swaps > 0, "the link was never swapped in");
        assert_all_root(&victim.0);
        assert_all_target(&data.0);
    }
}
