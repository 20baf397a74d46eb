//! `status`, `restart`, `stop`: the supervisor's commands.

use securely_proto::supervisor::supervisor_client::SupervisorClient;
use securely_proto::supervisor::{ProcessStatus, RestartRequest, StatusRequest, StopRequest};
use std::time::Duration;

use serde_json::json;

use crate::errors;
use crate::output;
use crate::target::Target;

pub async fn status(target: &Target, as_json: bool) -> anyhow::Result<()> {
    let mut client = SupervisorClient::new(target.supervisor().await?);
    let reply = client
        .status(StatusRequest {})
        .await
        .map_err(|s| errors::rpc("supervisor", s))?
        .into_inner();
    let supervisor = reply.supervisor.unwrap_or_default();
    if as_json {
        output::json(&json!({
            "supervisor": process_json(&supervisor),
            "daemons": reply.daemons.iter().map(process_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = std::iter::once(&supervisor)
        .chain(reply.daemons.iter())
        .map(|p| {
            let mut state = p.state.clone();
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
    })
}

pub async fn restart(target: &Target, daemon: &str) -> anyhow::Result<()> {
    let mut client = SupervisorClient::new(target.supervisor_unbounded().await?);
    let reply = client
        .restart(RestartRequest {
            daemon: daemon.to_string(),
        })
        .await
        .map_err(|s| errors::rpc("supervisor", s))?
        .into_inner();
    println!("{daemon} restarted (pid {})", reply.pid);
    Ok(())
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
