//! Who may take part in pingora's `-u` hand-over on `upgrade_sock`: root and the stack's
//! user (the user this supervisor runs as, and the configured `user`). Anyone else could
//! otherwise bind `upgrade_sock` and be handed every listening socket, or send a waiting
//! `-u` supervisor sockets of their own.

use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// The users allowed at the other end of `upgrade_sock`.
#[derive(Debug, Clone)]
pub struct Peers {
    allowed: Vec<u32>,
}

/// The process at the other end may not take part.
#[derive(Debug, thiserror::Error)]
pub enum PeerRefused {
    /// It runs as another user.
    #[error("uid {uid} (pid {pid}) is neither root nor the stack's user ({allowed})")]
    OtherUser {
        /// Its uid.
        uid: u32,
        /// Its pid.
        pid: i32,
        /// The uids allowed, for the log.
        allowed: String,
    },
    /// Its credentials cannot be read.
    #[error("its credentials cannot be read: {0}")]
    Unknown(#[from] nix::Error),
}

impl Peers {
    /// Root, this process's effective user, and `user` when the settings name one.
    pub fn new(user: Option<&str>) -> Self {
        let mut allowed = vec![0, nix::unistd::geteuid().as_raw()];
        if let Some(Ok(Some(user))) = user.map(nix::unistd::User::from_name) {
            allowed.push(user.uid.as_raw());
        }
        allowed.sort_unstable();
        allowed.dedup();
        Self { allowed }
    }

    /// Checks the process at the other end of `stream`: for a connecting client, the one
    /// that connected; for the listening side, the one that bound and listened.
    pub fn check(&self, stream: &UnixStream) -> Result<(), PeerRefused> {
        let cred = getsockopt(stream, PeerCredentials)?;
        let uid = cred.uid();
        if self.allowed.contains(&uid) {
            return Ok(());
        }
        Err(PeerRefused::OtherUser {
            uid,
            pid: cred.pid(),
            allowed: self
                .allowed
                .iter()
                .map(|uid| format!("uid {uid}"))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_user_is_allowed_and_a_stranger_is_not() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let peers = Peers::new(None);
        assert!(peers.check(&ours).is_ok());
        let strangers = Peers {
            allowed: vec![u32::MAX - 1],
        };
        let refused = strangers.check(&theirs).unwrap_err();
        assert!(
            refused.to_string().starts_with(&format!(
                "uid {} (pid {})",
                nix::unistd::geteuid(),
                std::process::id()
            )),
            "{refused}"
        );
    }
}
