//! A child process under limits: wall-clock time, address space, CPU time, size of the files
//! it writes, the output kept, and optionally no network. A process that runs past its time is killed with its whole
//! process group (a compiler's linker included); output past the limit is read and dropped,
//! so a child that floods its pipes never blocks.

use std::io::{self, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use wait_timeout::ChildExt;

/// What a child may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    /// Wall-clock seconds before the process group is killed.
    pub seconds: f64,
    /// Address space in bytes (`RLIMIT_AS`), `None` for no limit.
    pub memory_bytes: Option<u64>,
    /// Largest file the child may write (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
    /// Bytes of stdout and of stderr kept.
    pub output_bytes: usize,
    /// Start the child in network and user namespaces of its own (Linux, where unprivileged
    /// user namespaces are allowed): no interface but a loopback that is down. Best effort:
    /// where the kernel refuses, the child runs with the machine's network.
    pub offline: bool,
}

/// How a limited child ended.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Its exit status, `None` when it was killed for running past its time.
    pub status: Option<ExitStatus>,
    /// The first `output_bytes` of stdout, lossily decoded.
    pub stdout: String,
    /// The first `output_bytes` of stderr, lossily decoded.
    pub stderr: String,
}

/// Runs `command` (stdin closed, stdout and stderr captured) under `limits`.
pub(crate) fn run_limited(command: &mut Command, limits: &Limits) -> io::Result<Finished> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    unix::confine(command, limits);
    let mut child = command.spawn()?;
    let stdout = capture(child.stdout.take(), limits.output_bytes);
    let stderr = capture(child.stderr.take(), limits.output_bytes);
    let status = child.wait_timeout(Duration::from_secs_f64(limits.seconds));
    // Whatever is left of the group (a timed-out child, or what it spawned) goes, whether
    // or not the wait succeeded.
    #[cfg(unix)]
    unix::kill_group(child.id());
    #[cfg(not(unix))]
    let _ = child.kill();
    let status = match status? {
        Some(status) => Some(status),
        None => {
            child.wait()?;
            None
        }
    };
    let text = |reader: JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned()
    };
    Ok(Finished {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    })
}

/// Reads `pipe` to its end on a thread, keeping the first `limit` bytes.
fn capture(pipe: Option<impl Read + Send + 'static>, limit: usize) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = (&mut pipe).take(limit as u64).read_to_end(&mut kept);
            let _ = io::copy(&mut pipe, &mut io::sink());
        }
        kept
    })
}

#[cfg(unix)]
mod unix {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::Limits;

    /// The child leads a process group of its own and starts under the resource limits.
    pub(super) fn confine(command: &mut Command, limits: &Limits) {
        let cpu_seconds = limits.seconds.ceil() as libc::rlim_t + 1;
        let memory = limits.memory_bytes;
        let file_bytes = limits.file_bytes as libc::rlim_t;
        let offline = limits.offline;
        command.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                set(libc::RLIMIT_CPU, cpu_seconds)?;
                set(libc::RLIMIT_FSIZE, file_bytes)?;
                if let Some(bytes) = memory {
                    set(libc::RLIMIT_AS, bytes as libc::rlim_t)?;
                }
                if offline {
                    isolate_network();
                }
                Ok(())
            });
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    type Resource = libc::__rlimit_resource_t;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    type Resource = libc::c_int;

    fn set(resource: Resource, value: libc::rlim_t) -> std::io::Result<()> {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: a valid rlimit for a valid resource.
        match unsafe { libc::setrlimit(resource, &limit) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// New user and network namespaces for the calling process, where the kernel allows.
    #[cfg(target_os = "linux")]
    fn isolate_network() {
        // SAFETY: unshare only changes the calling (forked) process's namespaces.
        unsafe {
            libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET);
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn isolate_network() {}

    /// Sends SIGKILL to the process group `leader` leads; a group already gone is fine.
    pub(super) fn kill_group(leader: u32) {
        // SAFETY: kill with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-(leader as libc::pid_t), libc::SIGKILL);
        }
    }
}
