//! Dropping root after the sockets are bound, as pingora does with `user` and `group`.

use std::path::Path;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};

/// Gives `path` and, when it is a directory, everything below it (without following
/// symlinks) to `uid`/`gid`.
fn chown_tree(path: &Path, uid: Option<Uid>, gid: Gid) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, AtFlags};
    nix::unistd::fchownat(AT_FDCWD, path, uid, Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Switches to `user`/`group` when running as root, first giving them `owned` (the
/// runtime dir, the daemons' trees, the socket files, the pid file). Not root: the settings are noted and
/// the current user kept.
pub fn drop_privileges(
    user: Option<&str>,
    group: Option<&str>,
    owned: &[&Path],
) -> anyhow::Result<()> {
    if user.is_none() && group.is_none() {
        return Ok(());
    }
    if !Uid::effective().is_root() {
        // Started as the configured user already (systemd's `User=`): nothing to do.
        let already = user
            .and_then(|name| User::from_name(name).ok().flatten())
            .is_some_and(|u| u.uid == Uid::effective());
        if !already {
            eprintln!("securely: not running as root: the user and group settings are not applied");
        }
        return Ok(());
    }
    let user = match user {
        Some(name) => Some(
            User::from_name(name)
                .with_context(|| format!("user: looking up {name:?}"))?
                .with_context(|| format!("user: no such user {name:?}"))?,
        ),
        None => None,
    };
    let gid: Gid = match group {
        Some(name) => {
            Group::from_name(name)
                .with_context(|| format!("group: looking up {name:?}"))?
                .with_context(|| format!("group: no such group {name:?}"))?
                .gid
        }
        None => match &user {
            Some(user) => user.gid,
            None => bail!("group is set without user; set user too"),
        },
    };
    let uid = user.as_ref().map(|u| u.uid);
    for path in owned {
        chown_tree(path, uid, gid)
            .with_context(|| format!("handing {} to the securely user", path.display()))?;
    }
    setgroups(&[gid]).context("dropping supplementary groups")?;
    setgid(gid).context("switching group")?;
    if let Some(uid) = uid {
        setuid(uid).context("switching user")?;
    }
    Ok(())
}
