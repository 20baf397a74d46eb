//! Dropping root after the sockets are bound, as pingora does with `user` and `group`.

mod chown_tree;

use std::path::Path;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};

use chown_tree::{Owner, chown_tree};

/// Switches to `user`/`group` when running as root, first giving them `owned` (the
/// runtime dir, the daemons' trees, the socket files, the pid file), each walked by
/// descriptor without following symlinks ([`chown_tree`]). Not root: the settings are noted and
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
        let skipped = chown_tree(path, Owner { uid, gid })
            .with_context(|| format!("handing {} to the securely user", path.display()))?;
        for entry in skipped {
            eprintln!(
                "securely: left the owner of {} as it is: {}",
                entry.path.display(),
                entry.why
            );
        }
    }
    setgroups(&[gid]).context("dropping supplementary groups")?;
    setgid(gid).context("switching group")?;
    if let Some(uid) = uid {
        setuid(uid).context("switching user")?;
    }
    Ok(())
}
