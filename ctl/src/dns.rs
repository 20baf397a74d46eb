//! `dns:*`: dnsd's explicit records.

use securely_proto::dns::dns_admin_client::DnsAdminClient;
use securely_proto::dns::{ListRecordsRequest, SetRecordRequest, UnsetRecordRequest};
use std::time::Duration;

use serde_json::json;

use crate::errors;
use crate::output;
use crate::target::Target;

async fn client(target: &Target) -> anyhow::Result<DnsAdminClient<tonic::transport::Channel>> {
    Ok(DnsAdminClient::new(
        target.daemon("dnsd", Duration::ZERO).await?,
    ))
}

pub async fn set(
    target: &Target,
    name: String,
    rtype: String,
    value: String,
    ttl: u32,
) -> anyhow::Result<()> {
    let record = client(target)
        .await?
        .set_record(SetRecordRequest {
            name,
            r#type: rtype,
            value,
            ttl,
        })
        .await
        .map_err(|s| errors::rpc("dnsd", s))?
        .into_inner();
    println!(
        "{} {} {} {}",
        record.name, record.ttl, record.r#type, record.value
    );
    Ok(())
}

pub async fn unset(target: &Target, name: String, rtype: Option<String>) -> anyhow::Result<()> {
    let reply = client(target)
        .await?
        .unset_record(UnsetRecordRequest {
            name: name.clone(),
            r#type: rtype.unwrap_or_default(),
        })
        .await
        .map_err(|s| errors::rpc("dnsd", s))?
        .into_inner();
    println!("{} record(s) of {name} removed", reply.removed);
    Ok(())
}

pub async fn list(target: &Target, as_json: bool) -> anyhow::Result<()> {
    let records = client(target)
        .await?
        .list_records(ListRecordsRequest {})
        .await
        .map_err(|s| errors::rpc("dnsd", s))?
        .into_inner()
        .records;
    if as_json {
        let records: Vec<_> = records
            .iter()
            .map(|r| json!({"name": r.name, "type": r.r#type, "value": r.value, "ttl": r.ttl}))
            .collect();
        output::json(&json!(records));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = records
        .into_iter()
        .map(|r| vec![r.name, r.ttl.to_string(), r.r#type, r.value])
        .collect();
    output::table(&["NAME", "TTL", "TYPE", "VALUE"], &rows);
    Ok(())
}
