//! Phases **load** and **check**: the settings file (or the embedded defaults), resolved,
//! and every problem in it with its key.

use std::path::Path;

use securely_core::settings::Settings;

/// Reads the settings file, or the embedded defaults, and resolves them. Unknown keys
/// are warned about. Returns them with where they came from.
pub fn load(path: Option<&Path>) -> anyhow::Result<(Settings, String)> {
    let Some(path) = path else {
        return Ok((
            Settings::default().resolve(),
            "the embedded defaults".into(),
        ));
    };
    let origin = path.display().to_string();
    let settings = Settings::load_with(path, |key| {
        eprintln!("securely: {origin}: warning: unknown key {key} ignored");
    })?;
    Ok((settings.resolve(), origin))
}

/// Loads and checks the settings; the error names every problem.
pub fn load_valid(path: Option<&Path>) -> anyhow::Result<Settings> {
    let (settings, origin) = load(path)?;
    settings.validate().map_err(|errors| {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{origin}: {}", errors.join("; "))
    })?;
    Ok(settings)
}
