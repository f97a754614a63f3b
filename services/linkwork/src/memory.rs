//! How the allocators give memory back, set for the whole process before it starts.
//!
//! A service's resident size is mostly memory it used once and has freed: a batch's
//! statements and messages, librdkafka's fetch responses and produce requests. Both
//! allocators keep freed memory for reuse by default, and under the routing bench that
//! retention was half of the router's resident size (BENCHMARKS.md, Memory):
//!
//! - mimalloc (Rust's allocations) returns freed pages to the system 10 ms after they
//!   empty. Immediately instead took the router's mimalloc arena from 46 to 19 MiB
//!   resident at its peak, with no loss of throughput measured.
//! - glibc's malloc (librdkafka's and OpenSSL's allocations) gives each thread that
//!   allocates an arena of its own, and librdkafka runs a thread per broker connection
//!   per client; each arena keeps what was freed in it. One arena, blocks over 128 KiB
//!   mapped and unmapped on their own, and the top of the heap trimmed above 256 KiB
//!   took that part from 28 to 19 MiB.
//!
//! Both allocators read these settings from the environment when the process starts,
//! before `main`, so a process started without them runs itself again with them
//! ([`settle`]); settings already in the environment are kept as they are. (Setting
//! them from inside would need `unsafe` calls into both allocators, which the
//! workspace forbids.) It runs itself again once at most: [`SETTLED`] marks the second
//! start, because the loader removes glibc's variables for a binary with file
//! capabilities, and they would be missing again every time.

use std::ffi::OsString;
use std::process::Command;

/// Set on the process that runs again, which then never does.
pub const SETTLED: &str = "LINKWORK_ALLOCATOR_SETTLED";

/// The variables and the values linkwork runs with unless told otherwise.
pub const SETTINGS: [(&str, &str); 4] = [
    ("MIMALLOC_PURGE_DELAY", "0"),
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
    ("MALLOC_TRIM_THRESHOLD_", "262144"),
];

/// Runs this process again with [`SETTINGS`] when any is missing from its environment
/// (the same process id: `exec`). Returns when nothing needs to change. When the
/// `exec` fails the process exits: `exec` has already reset its signal handling, so
/// going on is not safe; setting the four variables avoids it.
pub fn settle() {
    let Some(mut command) = again(std::env::vars_os(), std::env::args_os()) else {
        return;
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = command.exec();
        eprintln!(
            "linkwork: could not run itself again with the allocator settings ({error}); \
             set {} to start without it",
            SETTINGS
                .map(|(name, value)| format!("{name}={value}"))
                .join(" ")
        );
        std::process::exit(70);
    }
    #[cfg(not(unix))]
    let _ = &mut command;
}

/// The command that runs this program again with the settings its environment lacks,
/// or `None` when it has them all.
fn again(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    mut args: impl Iterator<Item = OsString>,
) -> Option<Command> {
    let present: Vec<OsString> = vars.into_iter().map(|(name, _)| name).collect();
    if present.iter().any(|name| name == SETTLED) {
        return None;
    }
    let missing: Vec<(&str, &str)> = SETTINGS
        .into_iter()
        .filter(|(name, _)| !present.iter().any(|present| present == name))
        .collect();
    if missing.is_empty() {
        return None;
    }
    // The binary's path rather than /proc/self/exe, so the process keeps its name
    // (`ps`, `top`, `pkill linkwork`); a binary deleted meanwhile makes the exec fail.
    let program = std::env::current_exe().ok()?;
    let mut command = Command::new(program);
    #[cfg(unix)]
    if let Some(name) = args.next() {
        use std::os::unix::process::CommandExt;
        command.arg0(name);
    }
    #[cfg(not(unix))]
    let _ = args.next();
    command.args(args).envs(missing).env(SETTLED, "1");
    Some(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(name, value)| (OsString::from(name), OsString::from(value)))
            .collect()
    }

    #[test]
    fn a_process_without_the_settings_runs_again_with_all_of_them_and_its_arguments() {
        let args = ["linkwork", "serve", "router"].map(OsString::from);
        let command = again(os(&[("PATH", "/usr/bin")]), args.into_iter()).expect("runs again");
        let set: Vec<(String, String)> = command
            .get_envs()
            .map(|(name, value)| {
                (
                    name.to_string_lossy().into_owned(),
                    value.unwrap_or_default().to_string_lossy().into_owned(),
                )
            })
            .collect();
        for (name, value) in SETTINGS {
            assert!(
                set.contains(&(name.to_owned(), value.to_owned())),
                "{name} missing from {set:?}"
            );
        }
        let arguments: Vec<_> = command.get_args().collect();
        assert_eq!(arguments, ["serve", "router"]);
    }

    #[test]
    fn settings_already_in_the_environment_are_kept_and_only_the_rest_added() {
        let args = ["linkwork", "replay"].map(OsString::from);
        let command = again(os(&[("MALLOC_ARENA_MAX", "4")]), args.into_iter())
            .expect("runs again for the three missing");
        let names: Vec<String> = command
            .get_envs()
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        assert!(!names.contains(&"MALLOC_ARENA_MAX".to_owned()));
        assert!(
            names.contains(&SETTLED.to_owned()),
            "marks the second start"
        );
        assert_eq!(names.len(), SETTINGS.len() - 1 + 1);
    }

    #[test]
    fn a_process_that_ran_again_once_never_runs_again_even_if_the_loader_removed_them() {
        let args = ["linkwork", "serve", "all"].map(OsString::from);
        assert!(again(os(&[(SETTLED, "1")]), args.into_iter()).is_none());
    }

    #[test]
    fn a_process_that_has_them_all_goes_on_as_it_is() {
        let args = ["linkwork", "serve", "all"].map(OsString::from);
        assert!(again(os(&SETTINGS), args.into_iter()).is_none());
    }
}
