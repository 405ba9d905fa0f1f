//! Ctrl-C and SIGTERM: the signal sets a flag that the copy loops check, stopping through their ordinary error path (streams aborted, lengths restored, state left unfinished); a run blocked in a libvirt call is freed by the watchdog (`watchdog.rs`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The signals that stop an import cleanly.
const SIGNALS: [i32; 2] = [SIGINT, SIGTERM];

struct Flags {
    /// The signal received, 0 before any.
    signal: Arc<AtomicUsize>,
    /// Set by any of them: a second signal then exits at once (the rerun repairs what that
    /// leaves, see doc/operator-guide.md, "Interruptions").
    seen: Arc<AtomicBool>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// The error the copy loops return once a signal arrived.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}", signal_name(*.signal))]
pub struct Interrupted {
    pub signal: i32,
}

/// Catch SIGINT and SIGTERM from now on. The first one sets the flag that [`check`] reads;
/// a second one ends the process at once with the usual exit code (128 + signal).
pub fn install() -> std::io::Result<()> {
    let flags = FLAGS.get_or_init(|| Flags {
        signal: Arc::new(AtomicUsize::new(0)),
        seen: Arc::new(AtomicBool::new(false)),
    });
    for sig in SIGNALS {
        // Registered first, so it acts only on a signal after the first.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flags.seen.clone())?;
        signal_hook::flag::register(sig, flags.seen.clone())?;
        signal_hook::flag::register_usize(sig, flags.signal.clone(), sig as usize)?;
    }
    Ok(())
}

/// The signal received, if any.
pub fn received() -> Option<i32> {
    let sig = FLAGS.get()?.signal.load(Ordering::SeqCst);
    (sig != 0).then_some(sig as i32)
}

/// `Err(Interrupted)` once SIGINT or SIGTERM arrived: called by every copy loop between two
/// pieces of work.
pub fn check() -> Result<(), Interrupted> {
    match received() {
        Some(signal) => Err(Interrupted { signal }),
        None => Ok(()),
    }
}

/// "SIGINT", "SIGTERM", or the number.
pub fn signal_name(sig: i32) -> String {
    match sig {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// The one line an interrupted run ends with: what it was doing, what that leaves, and the
/// command to rerun (this one, quoted for a POSIX shell).
pub fn rerun_line(sig: i32, err: &anyhow::Error, raw_target: bool) -> String {
    let stopped = Interrupted { signal: sig }.to_string();
    let doing = err.to_string();
    let doing = if doing == stopped {
        String::new()
    } else {
        format!(" while {doing}")
    };
    format!("{stopped}{doing}: {}", what_is_left(raw_target))
}

/// The end of every line of a run cut short: what it leaves, and the command to rerun (this
/// one, quoted for a POSIX shell). `raw_target`: a `--target` run, which has no import state.
pub fn what_is_left(raw_target: bool) -> String {
    let left = if raw_target {
        "the target is partly written"
    } else {
        "what was left unfinished stays marked so in the import state"
    };
    format!(
        "{left}; rerun the same command to finish: {}",
        command_line()
    )
}

/// This process's command line, each argument quoted for a POSIX shell where it needs it.
fn command_line() -> String {
    std::env::args_os()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn arguments_are_quoted_only_where_a_shell_needs_it() {
        assert_eq!(shell_quote("--flat"), "--flat");
        assert_eq!(shell_quote("/var/tmp/a-b_c.vmdk"), "/var/tmp/a-b_c.vmdk");
        assert_eq!(shell_quote("my disk.vmdk"), "'my disk.vmdk'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
