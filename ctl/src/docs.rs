//! `completions` and `man`: shell completions and man pages, generated from the command
//! lines themselves (for packages: `securelyctl man DIR`, `securelyctl completions bash`).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use securely_core::cli::DaemonArgs;

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
        pages.push(DaemonArgs::command(daemon));
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
