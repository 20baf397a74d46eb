//! Running the stores' own tools (certutil, keytool, update-ca-certificates, ...) with a
//! deadline, their output captured, and the first line of their complaint as the reason.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one tool may run (update-ca-certificates runs hooks that rebuild Java's
/// keystore: seconds, not minutes).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a running tool is checked on.
const TOOL_POLL: Duration = Duration::from_millis(20);
/// The longest reason quoted from a tool's output.
const REASON_CHARS: usize = 200;

/// Why a tool did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program}: {reason}")]
    Failed { program: String, reason: String },
    #[error("{program} did not finish within {}s", TOOL_TIMEOUT.as_secs())]
    Timeout { program: String },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// What a tool printed when it succeeded.
#[derive(Debug)]
pub struct Done {
    pub stdout: String,
}

/// A tool's name for messages: its file name.
fn name(program: &Path) -> String {
    program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// Runs `program` with `args` (as `ids` = (uid, gid) when given), stdin closed; success
/// is exit status 0.
pub fn tool<I, S>(program: &Path, args: I, ids: Option<(u32, u32)>) -> Result<Done, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    tool_fed(program, args, ids, None)
}

/// [`tool`] with `input` on its stdin.
pub fn tool_fed<I, S>(
    program: &Path,
    args: I,
    ids: Option<(u32, u32)>,
    input: Option<&str>,
) -> Result<Done, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (ok, stdout, stderr) = run(program, args, ids, input)?;
    if ok {
        Ok(Done { stdout })
    } else {
        Err(ToolError::Failed {
            program: name(program),
            reason: reason(&stderr, &stdout),
        })
    }
}

/// Runs `program` and tells whether it exited 0, with its stdout (for tools whose
/// non-zero exit answers a question, like `certutil -L -n`).
pub fn ask<I, S>(
    program: &Path,
    args: I,
    ids: Option<(u32, u32)>,
) -> Result<(bool, String), ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (ok, stdout, _) = run(program, args, ids, None)?;
    Ok((ok, stdout))
}

fn run<I, S>(
    program: &Path,
    args: I,
    ids: Option<(u32, u32)>,
    input: Option<&str>,
) -> Result<(bool, String, String), ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = ids {
        command.uid(uid).gid(gid);
    }
    let spawn_error = |source| ToolError::Spawn {
        program: name(program),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_string();
        // Fed on a thread (closing stdin after), so a tool that reads late cannot block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    // Read both pipes on threads so a chatty tool cannot block on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait(&mut child, program)?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

fn wait(child: &mut Child, program: &Path) -> Result<bool, ToolError> {
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.success()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(TOOL_POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolError::Timeout {
                    program: name(program),
                });
            }
            Err(source) => {
                return Err(ToolError::Spawn {
                    program: name(program),
                    source,
                });
            }
        }
    }
}

/// The first non-empty line of what a failed tool said.
fn reason(stderr: &str, stdout: &str) -> String {
    let line = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("exited with an error");
    line.chars().take(REASON_CHARS).collect()
}

/// `program` as the shell would find it on PATH, if it is there.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_tool_gives_its_first_complaint_as_the_reason() {
        let sh = find_program("sh").expect("sh on PATH");
        let err = tool(
            &sh,
            ["-c", "echo; echo 'bad thing' >&2; echo more >&2; exit 3"],
            None,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "sh: bad thing");
        let done = tool(&sh, ["-c", "echo fine"], None).unwrap();
        assert_eq!(done.stdout, "fine\n");
        let fed = tool_fed(&sh, ["-c", "tr a-z A-Z"], None, Some("pem")).unwrap();
        assert_eq!(fed.stdout, "PEM");
        let (ok, out) = ask(&sh, ["-c", "echo no; exit 1"], None).unwrap();
        assert!(!ok);
        assert_eq!(out, "no\n");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = tool(Path::new("/nonexistent/certutil"), ["-L"], None).unwrap_err();
        assert!(matches!(err, ToolError::Spawn { .. }), "{err}");
        assert!(find_program("surely-no-such-program-here").is_none());
    }
}
