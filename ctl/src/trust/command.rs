//! The commands: `ca:trust` fetches the CA certificate from proxyd and installs it in this
//! machine's stores; `ca:untrust` removes what `ca:trust` added (it needs no proxyd, so it
//! works with the stack stopped or gone). One line per store; any failed line makes the
//! exit status non-zero.

use super::{Ca, Line, Outcome, Stores};
use crate::target::Target;

/// `ca:trust`.
pub async fn ca_trust(target: &Target) -> anyhow::Result<()> {
    let exported = crate::ca::fetch(target).await?;
    let ca = Ca::new(&exported.pem, &exported.sha256_fingerprint)?;
    report(&Stores::discover().trust(&ca))
}

/// `ca:untrust`.
pub fn ca_untrust() -> anyhow::Result<()> {
    report(&Stores::discover().untrust())
}

/// Prints the lines; an error when any store failed.
fn report(lines: &[Line]) -> anyhow::Result<()> {
    for line in lines {
        println!("{line}");
    }
    let failed = lines
        .iter()
        .filter(|l| matches!(l.outcome, Outcome::Failed(_)))
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} stores not changed", lines.len());
    }
    Ok(())
}
