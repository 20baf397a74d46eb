//! `completions` and `man`: shell completions and man pages, generated from the command
//! lines themselves (for packages: `securelyctl man DIR`, `securelyctl completions bash`).

use std::path::Path;

use anyhow::Context;
use clap::{Arg, Command, CommandFactory};

// The supervisor's command line, defined once in its package and compiled here too
// for its man page.
#[path = "../../supervisor/src/cli.rs"]
mod supervisor_cli;

/// Prints the completion script of `securelyctl` for `shell`.
pub fn completions(shell: clap_complete::Shell) {
    let mut command = crate::Cli::command();
    clap_complete::generate(shell, &mut command, "securelyctl", &mut std::io::stdout());
}

/// Writes `securely.1`, `securelyctl.1` and one page per daemon into `dir`.
pub fn man(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut pages = vec![supervisor_cli::Args::command(), crate::Cli::command()];
    for daemon in securely_core::DAEMONS {
        pages.push(daemon_command(daemon));
    }
    for command in pages {
        let name = command.get_name().to_string();
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// A daemon's command line (parsed by hand in `core::daemon`): `-c FILE`, `-h`, `-V`.
fn daemon_command(daemon: &str) -> Command {
    let about = match daemon {
        "proxyd" => "Securely's HTTP reverse proxy (pingora), run by the securely supervisor",
        "dnsd" => {
            "Securely's DNS server for the local TLD (hickory), run by the securely supervisor"
        }
        _ => "Securely's durable job queue (sled), run by the securely supervisor",
    };
    // clap wants a 'static name; this runs once per page of a short-lived command.
    let name: &'static str = securely_core::daemon_binary_name(daemon).leak();
    Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .about(about)
        .long_about(format!(
            "{about}. The supervisor hands it its sockets and settings; run by hand, it reads \
             FILE (or the embedded defaults) and binds its own sockets."
        ))
        .arg(
            Arg::new("conf")
                .short('c')
                .long("conf")
                .value_name("FILE")
                .help("The YAML settings file"),
        )
}
