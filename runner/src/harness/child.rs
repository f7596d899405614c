//! How the runner starts the processes a session owns (agent CLIs, `exec` commands, shell tools): each in a
//! process group of its own, so that an interrupt or a kill reaches everything it started; killed when its
//! handle is dropped; and, on Linux, killed by the kernel when the runner dies (`PR_SET_PDEATHSIG`). The
//! daemon's stop of a runner signals the runner's group, which a group of its own is not in; without the
//! death signal, an agent CLI waiting on its vendor would outlive a runner killed with SIGKILL, and go on
//! running and spending for a session nobody serves.
//!
//! The death signal fires when the *thread* that spawned the child exits. Children are spawned from async
//! code, on a runtime worker thread (or a test's runtime thread), which lives as long as the runtime; never
//! spawn one from `spawn_blocking`, whose threads exit when idle.

use tokio::process::Command;

/// Make `cmd` start a child that the runner owns, as the module says.
pub(super) fn owned_by_runner(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0).kill_on_drop(true);
    die_with_runner(cmd);
    cmd
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_runner(cmd: &mut Command) {
    let runner = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only calls `prctl` and `getppid`, both
    // async-signal-safe; it allocates nothing and touches no lock. If the runner already died between fork
    // and prctl, getppid() differs and the spawn fails instead of leaving an orphan.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid().as_raw() as u32 != runner {
                return Err(std::io::Error::other(
                    "the runner exited while starting this child",
                ));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_runner(_cmd: &mut Command) {}
