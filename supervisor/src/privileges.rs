//! Dropping root after the sockets are bound, as pingora does with `user` and `group`.

use std::path::Path;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Group, Uid, User, chown, setgid, setgroups, setuid};

/// Switches to `user`/`group` when running as root, first giving them `owned` (the
/// runtime and data directories, the socket files). Not root: the settings are noted and
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
        tracing::info!("not running as root: user/group settings left unapplied");
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
        chown(*path, uid, Some(gid))
            .with_context(|| format!("handing {} to the securely user", path.display()))?;
    }
    setgroups(&[gid]).context("dropping supplementary groups")?;
    setgid(gid).context("switching group")?;
    if let Some(uid) = uid {
        setuid(uid).context("switching user")?;
    }
    Ok(())
}
