//! `status`, `restart`, `reload`, `stop`: the supervisor's commands.

use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_proto::supervisor::{
    ProcessStatus, ReloadRequest, RestartRequest, StatusReply, StatusRequest, StopRequest,
    UpgradeStatus,
};
use std::time::Duration;

use serde_json::json;

use crate::errors;
use crate::follow::{self, Printing};
use crate::https_status::HttpsSummary;
use crate::output;
use crate::target::Target;

pub(crate) async fn fetch_status(target: &Target) -> anyhow::Result<StatusReply> {
    let mut client = SupervisorClient::new(target.supervisor().await?);
    Ok(client
        .status(StatusRequest {})
        .await
        .map_err(|s| errors::rpc("supervisor", s))?
        .into_inner())
}

pub async fn status(target: &Target, as_json: bool) -> anyhow::Result<()> {
    let reply = fetch_status(target).await?;
    let supervisor = reply.supervisor.unwrap_or_default();
    let upgrade = reply.upgrade.unwrap_or_default();
    let https = HttpsSummary::fetch(target).await;
    if as_json {
        output::json(&json!({
            "supervisor": process_json(&supervisor),
            "daemons": reply.daemons.iter().map(process_json).collect::<Vec<_>>(),
            "upgrade": if upgrade.id == 0 { serde_json::Value::Null } else { upgrade_json(&upgrade) },
            "https": https.as_ref().map_or(serde_json::Value::Null, HttpsSummary::json),
        }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = std::iter::once(&supervisor)
        .chain(reply.daemons.iter())
        .map(|p| {
            let mut state = p.state.clone();
            if !p.draining_pids.is_empty() {
                let pids: Vec<String> = p.draining_pids.iter().map(ToString::to_string).collect();
                state.push_str(&format!(" (draining: {})", pids.join(",")));
            }
            if p.next_start_in_ms > 0 {
                state.push_str(&format!(
                    " (retry in {})",
                    output::duration_ms(p.next_start_in_ms)
                ));
            }
            vec![
                p.name.clone(),
                state,
                if p.pid == 0 {
                    "-".into()
                } else {
                    p.pid.to_string()
                },
                output::duration_ms(p.uptime_ms),
                p.restarts.to_string(),
                p.listeners.join(","),
                if p.tree.is_empty() {
                    "-".into()
                } else {
                    p.tree.clone()
                },
                p.last_exit.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "STATE",
            "PID",
            "UPTIME",
            "RESTARTS",
            "LISTENERS",
            "TREE",
            "LAST EXIT",
        ],
        &rows,
    );
    if upgrade.id != 0 {
        println!(
            "\nlast upgrade: #{} {} after {}: {}",
            upgrade.id,
            upgrade.state,
            output::duration_ms(upgrade.took_ms),
            upgrade.detail
        );
    }
    if let Some(https) = https {
        https.print();
    }
    Ok(())
}

fn process_json(p: &ProcessStatus) -> serde_json::Value {
    json!({
        "name": p.name,
        "state": p.state,
        "pid": if p.pid == 0 { serde_json::Value::Null } else { json!(p.pid) },
        "uptime_ms": p.uptime_ms,
        "restarts": p.restarts,
        "listeners": p.listeners,
        "tree": if p.tree.is_empty() { serde_json::Value::Null } else { json!(p.tree) },
        "socket": p.socket,
        "last_exit": if p.last_exit.is_empty() { serde_json::Value::Null } else { json!(p.last_exit) },
        "consecutive_failures": p.consecutive_failures,
        "next_start_in_ms": p.next_start_in_ms,
        "draining_pids": p.draining_pids,
    })
}

fn upgrade_json(u: &UpgradeStatus) -> serde_json::Value {
    json!({ "id": u.id, "state": u.state, "detail": u.detail, "took_ms": u.took_ms })
}

pub async fn restart(target: &Target, daemon: &str, printing: Printing) -> anyhow::Result<()> {
    let mut client = SupervisorClient::new(target.supervisor_unbounded().await?);
    let call = async move {
        Ok(client
            .restart(RestartRequest {
                daemon: daemon.to_string(),
            })
            .await
            .map_err(|s| errors::rpc("supervisor", s))?
            .into_inner())
    };
    let (reply, _) = follow::around(target, printing, call, follow::restart_of(daemon)).await?;
    let plain = match reply.old_pid {
        0 => format!("{daemon} restarted (pid {})", reply.pid),
        old => format!(
            "{daemon} restarted (pid {}; pid {old} finishes its in-flight work)",
            reply.pid
        ),
    };
    let old_pid = (reply.old_pid != 0).then_some(reply.old_pid);
    printing.result(
        &plain,
        json!({ "kind": "result", "daemon": daemon, "state": "restarted", "pid": reply.pid, "old_pid": old_pid }),
    );
    Ok(())
}

/// How often `reload` looks at the upgrade's progress.
const RELOAD_POLL: Duration = Duration::from_millis(50);
/// How long `reload` follows an upgrade (each daemon's hand-over is bounded by the
/// supervisor; this only guards against a supervisor that stops answering).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn reload(target: &Target, printing: Printing) -> anyhow::Result<()> {
    let client = SupervisorClient::new(target.supervisor_unbounded().await?);
    let call = async move {
        let mut client = client;
        Ok(client
            .reload(ReloadRequest {})
            .await
            .map_err(|s| errors::rpc("supervisor", s))?
            .into_inner()
            .id)
        // The connection closes here, so the supervisor's control server stops at once.
    };
    let (id, last_seq) = follow::around(target, printing, call, follow::upgrade()).await?;
    let give_up = tokio::time::Instant::now() + RELOAD_TIMEOUT;
    if !printing.quiet {
        // The supervisor re-executes now: its new image's events, up to the upgrade's end.
        follow::resumed(
            target,
            printing,
            last_seq,
            give_up,
            follow::upgrade_resumed(id),
        )
        .await;
    }
    // The result, from `status` (also when the events could not be followed).
    let mut last_error = String::new();
    while tokio::time::Instant::now() < give_up {
        let upgrade = match upgrade_status(target).await {
            Ok(upgrade) => upgrade,
            Err(e) => {
                last_error = format!("{e:#}");
                tokio::time::sleep(RELOAD_POLL).await;
                continue;
            }
        };
        if upgrade.id != id || upgrade.state == "running" {
            tokio::time::sleep(RELOAD_POLL).await;
            continue;
        }
        if upgrade.state == "done" {
            let plain = format!(
                "reloaded in {}: {}",
                output::duration_ms(upgrade.took_ms),
                upgrade.detail
            );
            printing.result(
                &plain,
                json!({ "kind": "result", "state": "reloaded", "id": id, "took_ms": upgrade.took_ms, "detail": upgrade.detail }),
            );
            return Ok(());
        }
        anyhow::bail!("reload failed: {}", upgrade.detail);
    }
    anyhow::bail!(
        "reload: no result within {}s{}",
        RELOAD_TIMEOUT.as_secs(),
        if last_error.is_empty() {
            String::new()
        } else {
            format!(" (last error: {last_error})")
        }
    )
}

async fn upgrade_status(target: &Target) -> anyhow::Result<UpgradeStatus> {
    Ok(fetch_status(target).await?.upgrade.unwrap_or_default())
}

/// How often `stop` looks whether the supervisor is gone.
const STOP_POLL: Duration = Duration::from_millis(50);

pub async fn stop(target: &Target, fast: bool, no_wait: bool) -> anyhow::Result<()> {
    let mut client = SupervisorClient::new(target.supervisor().await?);
    client
        .stop(StopRequest { graceful: !fast })
        .await
        .map_err(|s| errors::rpc("supervisor", s))?;
    if no_wait {
        println!("stopping");
        return Ok(());
    }
    // The supervisor removes its control socket last, once every daemon is gone.
    while target.control_socket().exists() {
        tokio::time::sleep(STOP_POLL).await;
    }
    println!("stopped");
    Ok(())
}
