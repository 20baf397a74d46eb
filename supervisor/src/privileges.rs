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
    let Owner { uid, gid } = stack_owner(user, group)?;
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

/// The owner `user`/`group` name: the user's uid (if set) and the group's gid (the user's
/// own group when only `user` is set).
fn stack_owner(user: Option<&str>, group: Option<&str>) -> anyhow::Result<Owner> {
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
    Ok(Owner {
        uid: user.map(|u| u.uid),
        gid,
    })
}

/// Gives the socket file at `path`, just bound by this process, to the stack's
/// `user`/`group` when running as root, so that a supervisor that already dropped to them
/// can connect to it (the file is 0660). Not root, or no user and group: nothing to do.
pub fn give_socket_to_stack_user(
    path: &Path,
    user: Option<&str>,
    group: Option<&str>,
) -> anyhow::Result<()> {
    if (user.is_none() && group.is_none()) || !Uid::effective().is_root() {
        return Ok(());
    }
    let Owner { uid, gid } = stack_owner(user, group)?;
    std::os::unix::fs::lchown(path, uid.map(Uid::as_raw), Some(gid.as_raw()))
        .with_context(|| format!("handing {} to the stack's user", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn a_socket_bound_as_root_is_given_to_the_stack_user() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("securely-usock-XXXXXX"))
            .expect("mkdtemp");
        let path = dir.join("upgrade.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        give_socket_to_stack_user(&path, Some("nobody"), None).unwrap();
        let nobody = User::from_name("nobody").unwrap().unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (nobody.uid.as_raw(), nobody.gid.as_raw())
        );
        give_socket_to_stack_user(&path, None, None).unwrap();
        assert_eq!(
            std::fs::symlink_metadata(&path).unwrap().uid(),
            nobody.uid.as_raw()
        );
    }
}
