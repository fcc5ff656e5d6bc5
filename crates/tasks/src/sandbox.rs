//! A child process under limits: wall-clock time, address space, CPU time, size of the files
//! it writes, processes, the output kept, and optionally a jail. A process that runs past its
//! time is killed with its whole process group (a compiler's linker included); output past
//! the limit is read and dropped, so a child that floods its pipes never blocks, and the pipes
//! are waited for a bounded time after the child ends.
//!
//! The jail (Linux): the child drops root for `nobody` where it runs as root, enters user,
//! PID and network namespaces of its own, `chroot`s into its working directory and runs as
//! PID 1 of its namespace, so it sees no file of the host, no network, no process of the host,
//! and every process it starts dies with it (the kernel ends a PID namespace with its first
//! process), whatever process group or session it moves to.

use std::io::{self, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
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
    /// Run in the jail (see the [module](self) docs); the program must be a static binary in
    /// the working directory, named from the jail's root (`/solution`).
    pub jail: Option<Jail>,
}

/// How the jail is held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Jail {
    /// Processes and threads the jailed child may have at once (`RLIMIT_NPROC` inside its
    /// namespace).
    pub processes: u64,
    /// Where the kernel refuses namespaces: `true` fails the spawn, `false` runs the child
    /// with the resource limits only.
    pub required: bool,
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

/// How long the pipes are read after the child ended (a descendant that escaped the kill
/// could hold them open).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Runs `command` (stdin closed, stdout and stderr captured) under `limits`.
pub(crate) fn run_limited(command: &mut Command, limits: &Limits) -> io::Result<Finished> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    unix::confine(command, limits)?;
    #[cfg(not(unix))]
    if limits.jail.is_some_and(|j| j.required) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the jail needs Linux namespaces",
        ));
    }
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
    let text = |reader: mpsc::Receiver<Vec<u8>>| {
        String::from_utf8_lossy(&reader.recv_timeout(PIPE_GRACE).unwrap_or_default()).into_owned()
    };
    Ok(Finished {
        status,
        stdout: text(stdout),
        stderr: text(stderr),
    })
}

/// Reads `pipe` to its end on a thread, keeping the first `limit` bytes; the bytes arrive on
/// the returned channel when the pipe closes.
fn capture(pipe: Option<impl Read + Send + 'static>, limit: usize) -> mpsc::Receiver<Vec<u8>> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = (&mut pipe).take(limit as u64).read_to_end(&mut kept);
            let _ = io::copy(&mut pipe, &mut io::sink());
        }
        let _ = send.send(kept);
    });
    receive
}

#[cfg(unix)]
mod unix {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::Limits;

    /// The child leads a process group of its own and starts under the resource limits, in
    /// the jail where asked.
    pub(super) fn confine(command: &mut Command, limits: &Limits) -> std::io::Result<()> {
        let cpu_seconds = limits.seconds.ceil() as libc::rlim_t + 1;
        let memory = limits.memory_bytes;
        let file_bytes = limits.file_bytes as libc::rlim_t;
        let jail = limits.jail.map(jail::Plan::new).transpose()?;
        command.process_group(0);
        // SAFETY: the closure runs in the forked child before exec; it only makes system
        // calls (setrlimit, and the jail's: setuid, unshare, open/write, chroot, fork,
        // waitpid, _exit) on data prepared before the fork, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                set(libc::RLIMIT_CPU, cpu_seconds)?;
                set(libc::RLIMIT_FSIZE, file_bytes)?;
                if let Some(bytes) = memory {
                    set(libc::RLIMIT_AS, bytes as libc::rlim_t)?;
                }
                match &jail {
                    Some(plan) => plan.enter(),
                    None => Ok(()),
                }
            });
        }
        Ok(())
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

    /// Sends SIGKILL to the process group `leader` leads; a group already gone is fine.
    pub(super) fn kill_group(leader: u32) {
        // SAFETY: kill with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-(leader as libc::pid_t), libc::SIGKILL);
        }
    }

    #[cfg(target_os = "linux")]
    mod jail {
        use std::ffi::CString;
        use std::io;

        use super::super::Jail;
        use super::set;

        /// `nobody`, which a child running as root becomes before it enters the jail.
        const NOBODY: libc::uid_t = 65534;

        /// Everything the jail needs, prepared before the fork.
        pub(in super::super) struct Plan {
            jail: Jail,
            drop_root: bool,
            uid_map: CString,
            gid_map: CString,
        }

        impl Plan {
            pub fn new(jail: Jail) -> io::Result<Self> {
                // SAFETY: getuid and getgid cannot fail.
                let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                let drop_root = uid == 0;
                let (uid, gid) = if drop_root {
                    (NOBODY, NOBODY)
                } else {
                    (uid, gid)
                };
                let map = |id| CString::new(format!("0 {id} 1\n")).map_err(io::Error::other);
                Ok(Self {
                    jail,
                    drop_root,
                    uid_map: map(uid)?,
                    gid_map: map(gid)?,
                })
            }

            /// In the forked child: into the jail, or `Err` (a refused namespace fails the
            /// spawn only where the jail is required).
            pub fn enter(&self) -> io::Result<()> {
                match self.namespaces() {
                    Ok(()) => {}
                    Err(_) if !self.jail.required => return Ok(()),
                    Err(e) => return Err(e),
                }
                set(libc::RLIMIT_NPROC, self.jail.processes as libc::rlim_t)?;
                // SAFETY: chroot and chdir take valid C strings.
                check(unsafe { libc::chroot(c".".as_ptr()) })?;
                check(unsafe { libc::chdir(c"/".as_ptr()) })?;
                self.become_first_process()
            }

            /// Drops root, then new user, PID and network namespaces with this process's
            /// ids mapped to the namespace's root.
            fn namespaces(&self) -> io::Result<()> {
                // SAFETY: plain system calls on no memory but static strings.
                unsafe {
                    if self.drop_root {
                        check(libc::setgroups(0, std::ptr::null()))?;
                        check(libc::setgid(NOBODY))?;
                        check(libc::setuid(NOBODY))?;
                        // A process that changed its ids is not dumpable, and /proc/self is
                        // then root's: make it ours again to write the maps.
                        check(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0))?;
                    }
                    check(libc::unshare(
                        libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNET,
                    ))?;
                }
                write(c"/proc/self/setgroups", c"deny")?;
                write(c"/proc/self/uid_map", &self.uid_map)?;
                write(c"/proc/self/gid_map", &self.gid_map)
            }

            /// Forks twice: the child, PID 1 of the new namespace, forks the process that goes
            /// on to exec the program and waits for it; this process learns how it ended from
            /// PID 1 through a pipe and ends the same way. (The program is not PID 1 itself: the
            /// kernel ignores a signal PID 1 raises at itself, so its `abort()` would read as a
            /// segfault.) Killing this process's group kills this process and PID 1, and with
            /// PID 1 every process of the namespace.
            fn become_first_process(&self) -> io::Result<()> {
                let mut pipe = [0; 2];
                // SAFETY: the handler the parent installed for SIGCHLD (to wait with a
                // timeout) writes to a descriptor closed below: restore the default first.
                // fork in a child that only execs or waits afterwards.
                let first = unsafe {
                    check(libc::pipe(pipe.as_mut_ptr()))?;
                    libc::signal(libc::SIGCHLD, libc::SIG_DFL);
                    check(libc::fork())?
                };
                let [read, write] = pipe;
                if first == 0 {
                    // SAFETY: as above; PID 1 only forks, closes, waits, writes and exits.
                    unsafe {
                        libc::close(read);
                        let program = check(libc::fork())?;
                        if program == 0 {
                            libc::close(write);
                            return Ok(());
                        }
                        close_all_but(write);
                        let status = wait(program);
                        libc::write(write, (&raw const status).cast(), 4);
                        libc::_exit(0)
                    }
                }
                // SAFETY: closes what this process no longer needs (among them the pipe on
                // which the parent learns that the program started), reads, waits and exits.
                unsafe {
                    libc::close(write);
                    close_all_but(read);
                    let mut status: libc::c_int = 0;
                    let got = libc::read(read, (&raw mut status).cast(), 4);
                    let first = wait(first);
                    let status = if got == 4 { status } else { first };
                    if libc::WIFSIGNALED(status) {
                        let signal = libc::WTERMSIG(status);
                        libc::signal(signal, libc::SIG_DFL);
                        libc::kill(libc::getpid(), signal);
                        libc::_exit(128 + signal);
                    }
                    libc::_exit(libc::WEXITSTATUS(status))
                }
            }
        }

        /// Closes every descriptor from 3 on but `keep`.
        ///
        /// # Safety
        /// Only for a forked child that needs no other descriptor.
        unsafe fn close_all_but(keep: libc::c_int) {
            // SAFETY: see the function's contract.
            unsafe {
                if keep > 3 {
                    libc::close_range(3, keep as libc::c_uint - 1, 0);
                }
                libc::close_range(keep as libc::c_uint + 1, libc::c_uint::MAX, 0);
            }
        }

        /// The wait status of child `pid` (retrying on EINTR; 127 as an exit status when it
        /// cannot be waited for).
        ///
        /// # Safety
        /// `pid` is a child of this process.
        unsafe fn wait(pid: libc::pid_t) -> libc::c_int {
            let mut status = 0;
            // SAFETY: see the function's contract.
            unsafe {
                while libc::waitpid(pid, &mut status, 0) < 0 {
                    if *libc::__errno_location() != libc::EINTR {
                        return 127 << 8;
                    }
                }
            }
            status
        }

        fn check(result: libc::c_int) -> io::Result<libc::c_int> {
            match result {
                -1 => Err(io::Error::last_os_error()),
                n => Ok(n),
            }
        }

        fn write(path: &std::ffi::CStr, text: &std::ffi::CStr) -> io::Result<()> {
            // SAFETY: open/write/close on a valid path and buffer.
            unsafe {
                let fd = check(libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC))?;
                let bytes = text.to_bytes();
                let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
                libc::close(fd);
                match written == bytes.len() as isize {
                    true => Ok(()),
                    false => Err(io::Error::last_os_error()),
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    mod jail {
        use std::io;

        use super::super::Jail;

        /// Elsewhere than Linux there are no namespaces to jail a child in.
        pub(in super::super) struct Plan(Jail);

        impl Plan {
            pub fn new(jail: Jail) -> io::Result<Self> {
                match jail.required {
                    true => Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "the jail needs Linux namespaces",
                    )),
                    false => Ok(Self(jail)),
                }
            }

            pub fn enter(&self) -> io::Result<()> {
                Ok(())
            }
        }
    }
}
