//! pingora's `ServerConf`, from the Securely settings (the pingora keys sit at the top
//! level of the settings file under their pingora names).

use std::path::Path;

use pingora::server::configuration::ServerConf;
use securely_core::settings::Settings;

/// pingora's configuration for proxyd.
///
/// Taken from the settings as they are: `version`, `threads`, `work_stealing`,
/// `graceful_shutdown_timeout_seconds`, `ca_file`, `client_bind_to_ipv4/6` and
/// `upstream_keepalive_pool_size`. Decided by proxyd instead:
///
/// * `daemon` is always false: the supervisor daemonizes, and pingora must not fork.
/// * `grace_period_seconds` is zero. pingora spends its grace period in a fixed sleep;
///   proxyd drains by work, bounded by the settings' `grace_period_seconds`, *before* it
///   lets pingora's main loop end (see [`crate::drain`]), so nothing is left to wait for.
/// * `pid_file` and `upgrade_sock` are proxyd's own paths under `runtime_dir`, never the
///   supervisor's: pingora writes a pid file only when it daemonizes and uses the upgrade
///   socket only on a graceful upgrade, and proxyd does neither (its listeners come from
///   the supervisor, see [`crate::listeners`]).
/// * `user`, `group` and `error_log` stay unset: the supervisor drops privileges before
///   exec, and logging belongs to `securely_core::logging`.
pub fn server_conf(settings: &Settings) -> ServerConf {
    let runtime_dir = settings.runtime_dir();
    let path = |name: &str| path_string(&runtime_dir.join(name));
    ServerConf {
        version: settings.version,
        daemon: false,
        pid_file: path("proxyd.pid"),
        upgrade_sock: path("proxyd-upgrade.sock"),
        threads: settings.threads,
        work_stealing: settings.work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: settings.graceful_shutdown_timeout_seconds,
        ca_file: settings.ca_file.clone(),
        client_bind_to_ipv4: settings.client_bind_to_ipv4.clone(),
        client_bind_to_ipv6: settings.client_bind_to_ipv6.clone(),
        upstream_keepalive_pool_size: settings.upstream_keepalive_pool_size,
        ..ServerConf::default()
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_keys_carry_over_and_proxyd_decides_the_rest() {
        let settings = Settings::from_yaml(
            "threads: 3\nwork_stealing: false\ngrace_period_seconds: 30\n\
             graceful_shutdown_timeout_seconds: 2\nupstream_keepalive_pool_size: 7\n\
             client_bind_to_ipv4: [127.0.0.2]\ndaemon: true\nruntime_dir: /run/x\n",
            "test",
            |_| {},
        )
        .unwrap()
        .resolve();
        let conf = server_conf(&settings);
        assert_eq!(conf.threads, 3);
        assert!(!conf.work_stealing);
        assert_eq!(conf.graceful_shutdown_timeout_seconds, Some(2));
        assert_eq!(conf.upstream_keepalive_pool_size, 7);
        assert_eq!(conf.client_bind_to_ipv4, vec!["127.0.0.2"]);
        assert!(!conf.daemon);
        assert_eq!(conf.grace_period_seconds, Some(0));
        assert_eq!(conf.upgrade_sock, "/run/x/proxyd-upgrade.sock");
        assert_ne!(Some(conf.upgrade_sock.into()), settings.upgrade_sock);
    }
}
