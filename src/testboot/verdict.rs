//! The verdict of a test boot from what was seen: text on the serial console or the screen, the guest agent, lifecycle events.

use std::time::Duration;

/// What a test boot concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// A login prompt on the serial console or the screen, or the guest agent answered.
    Booted,
    /// A kernel panic, a root device not found, emergency mode, a Windows stop code, no
    /// bootable device, a crash or a reboot loop.
    Failed,
    /// Neither, within the time given.
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Booted => "booted",
            Verdict::Failed => "failed",
            Verdict::Unknown => "unknown",
        }
    }
}

/// A verdict with the thing that decided it: where it was seen and what it said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub verdict: Verdict,
    /// `serial`, `screen`, `agent`, `events` or `timeout`.
    pub source: &'static str,
    /// The line of text, or what the events counted.
    pub evidence: String,
}

/// Reboots in one test boot that make a loop: a guest may reboot once or twice on its own
/// (a Windows driver install, a file system check), not three times before a login prompt.
pub const REBOOT_LOOP: u32 = 3;

/// Text that says the boot failed (matched without regard to case), with what it means.
const FAILURES: &[(&str, &str)] = &[
    ("kernel panic", "kernel panic"),
    ("gave up waiting for root", "root device not found"),
    ("alert!  /dev/", "root device not found"),
    ("emergency mode", "emergency mode"),
    ("no bootable device", "no bootable device"),
    ("boot failed", "the firmware found nothing to boot"),
    ("inaccessible_boot_device", "Windows stop code"),
    ("your pc ran into a problem", "Windows stop code"),
    ("stop code:", "Windows stop code"),
    ("*** stop: 0x", "Windows stop code"),
    ("(initramfs)", "dropped to the initramfs shell"),
];

/// Text that says the guest is up and waits for a user.
const BOOTED: &[&str] = &["login:"];

/// The verdict `text` (a console log, or what OCR read on the screen) gives, if any: a
/// failure wins over a login prompt (emergency mode can follow a prompt on another console).
pub fn from_text(text: &str, source: &'static str) -> Option<Finding> {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let lower: Vec<String> = lines.iter().map(|l| l.to_lowercase()).collect();
    for (needle, what) in FAILURES {
        if let Some(i) = lower.iter().position(|l| l.contains(needle)) {
            return Some(Finding {
                verdict: Verdict::Failed,
                source,
                evidence: format!("{what}: {}", lines[i].trim()),
            });
        }
    }
    let i = lower
        .iter()
        .position(|l| BOOTED.iter().any(|b| l.contains(b)))?;
    Some(Finding {
        verdict: Verdict::Booted,
        source,
        evidence: format!("login prompt: {}", lines[i].trim()),
    })
}

/// The verdict the lifecycle events give, if any.
pub fn from_events(reboots: u32, crashes: u32, watched: Duration) -> Option<Finding> {
    let evidence = if crashes > 0 {
        format!(
            "the guest crashed (libvirt's crashed event) after {} s",
            watched.as_secs()
        )
    } else if reboots >= REBOOT_LOOP {
        format!("reboot loop: {reboots} reboots in {} s", watched.as_secs())
    } else {
        return None;
    };
    Some(Finding {
        verdict: Verdict::Failed,
        source: "events",
        evidence,
    })
}

/// The guest agent answered with its host name.
pub fn from_agent(hostname: &str) -> Finding {
    Finding {
        verdict: Verdict::Booted,
        source: "agent",
        evidence: format!("the guest agent answers (host name {hostname:?})"),
    }
}

/// Nothing decided within `timeout`; `stopped` when the guest powered itself off first.
pub fn undecided(timeout: Duration, stopped_after: Option<Duration>) -> Finding {
    let evidence = match stopped_after {
        Some(d) => format!(
            "the guest stopped after {} s with no login prompt, failure text or agent answer",
            d.as_secs()
        ),
        None => format!(
            "no login prompt, failure text or agent answer in {} s",
            timeout.as_secs()
        ),
    };
    Finding {
        verdict: Verdict::Unknown,
        source: "timeout",
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(text: &str) -> Option<(Verdict, String)> {
        from_text(text, "serial").map(|f| (f.verdict, f.evidence))
    }

    #[test]
    fn failure_text_gives_failed_with_its_line() {
        let panic = "[ 1.2] VFS: cannot open root\r\n[ 1.3] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n";
        assert_eq!(
            verdict(panic),
            Some((
                Verdict::Failed,
                "kernel panic: [ 1.3] Kernel panic - not syncing: VFS: Unable to mount root fs"
                    .into()
            ))
        );
        for (text, what) in [
            (
                "Gave up waiting for root file system device.",
                "root device not found",
            ),
            (
                "You are in emergency mode. After logging in",
                "emergency mode",
            ),
            ("No bootable device.", "no bootable device"),
            ("Stop code: INACCESSIBLE_BOOT_DEVICE", "Windows stop code"),
            ("(initramfs) ", "dropped to the initramfs shell"),
        ] {
            let (v, e) = verdict(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(v, Verdict::Failed, "{text}");
            assert!(e.starts_with(what), "{e}");
        }
    }

    #[test]
    fn a_login_prompt_gives_booted_and_loses_to_a_failure() {
        assert_eq!(
            verdict("Debian GNU/Linux 12 deb01 ttyS0\n\ndeb01 login: ").map(|v| v.0),
            Some(Verdict::Booted)
        );
        assert_eq!(
            verdict("deb01 login:\nKernel panic - not syncing").map(|v| v.0),
            Some(Verdict::Failed)
        );
        assert_eq!(
            verdict("SeaBIOS (version 1.16.2)\nBooting from Hard Disk..."),
            None
        );
        assert_eq!(verdict(""), None);
    }

    #[test]
    fn reboots_make_a_loop_at_three_and_a_crash_fails_at_once() {
        let t = Duration::from_secs(9);
        assert_eq!(from_events(REBOOT_LOOP - 1, 0, t), None);
        let f = from_events(REBOOT_LOOP, 0, t).unwrap();
        assert_eq!(
            (f.verdict, f.evidence.as_str()),
            (Verdict::Failed, "reboot loop: 3 reboots in 9 s")
        );
        assert_eq!(from_events(0, 1, t).unwrap().verdict, Verdict::Failed);
    }

    #[test]
    fn nothing_seen_is_unknown_and_says_why() {
        let f = undecided(Duration::from_secs(20), None);
        assert_eq!(f.verdict, Verdict::Unknown);
        assert!(f.evidence.contains("in 20 s"), "{}", f.evidence);
        let f = undecided(Duration::from_secs(20), Some(Duration::from_secs(4)));
        assert!(f.evidence.contains("stopped after 4 s"), "{}", f.evidence);
    }
}
