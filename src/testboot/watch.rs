//! Watching the throwaway domain until a verdict or the timeout: its serial console, libvirt's events, its disks' counters, the guest agent, and screenshots kept when the screen changes (read by tesseract where it is installed).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::verdict::{self, Finding};
use crate::interrupt;
use crate::libvirt::{self, Conn, Dom, Events};

/// How often the console and the events are looked at.
const TICK: Duration = Duration::from_millis(500);
/// How long a console line that decided the verdict is given to be written to its end.
const LINE_END: Duration = Duration::from_secs(1);
/// How often the screen is taken.
const SCREEN_EVERY: Duration = Duration::from_secs(3);
/// How often the guest agent is asked (each question waits for it up to libvirt's timeout).
const AGENT_EVERY: Duration = Duration::from_secs(5);

/// What to watch, and where kept screenshots go.
pub struct Watch<'a> {
    pub conn: &'a Conn,
    pub dom: &'a Dom,
    pub events: &'a Events,
    /// The console log file, when it can be read here (a local connection).
    pub console_log: Option<PathBuf>,
    /// The disks' target devices, for their counters.
    pub disks: Vec<String>,
    pub timeout: Duration,
    /// The domain has a QEMU guest agent channel.
    pub agent: bool,
    /// Where screenshots are written (`--report`); None keeps only the last, in memory.
    pub shots_dir: Option<PathBuf>,
}

/// One screenshot kept: the screen had changed since the one before.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shot {
    /// The file in the report folder, if there is one.
    pub file: Option<String>,
    /// Milliseconds after the guest was let run.
    pub at_ms: u64,
    /// What tesseract read on it (absent without tesseract).
    pub text: Option<String>,
}

/// Everything the watch saw.
#[derive(Debug, Default)]
pub struct Observed {
    pub finding: Option<Finding>,
    pub watched: Duration,
    pub reboots: u32,
    pub crashes: u32,
    pub shots: Vec<Shot>,
    /// The last screen kept (PNG, as libvirt gave it).
    pub last_screen: Option<Vec<u8>>,
    /// The last two screens taken, kept or not.
    recent: Vec<Vec<u8>>,
    pub console: String,
    /// `(dev, bytes read, bytes written)` at the end.
    pub disk_io: Vec<(String, u64, u64)>,
    /// Lines about signals that could not be read (no tesseract, no screen...).
    pub notes: Vec<String>,
}

/// tesseract's version line, or None when it is not installed.
pub fn tesseract() -> Option<String> {
    let out = Command::new("tesseract")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    out.status.success().then(|| {
        text.lines()
            .next()
            .unwrap_or("tesseract")
            .trim()
            .to_string()
    })
}

impl Watch<'_> {
    /// Watch until a verdict, the timeout, the guest's stop, or a signal (an error).
    pub fn run(&self) -> Result<Observed> {
        let mut seen = Observed::default();
        let ocr = tesseract();
        if ocr.is_none() {
            seen.notes.push(
                "tesseract is not installed: the screen was not read, the verdict rests on the console, the agent and the events".into(),
            );
        }
        if self.console_log.is_none() {
            seen.notes.push(
                "the serial console is logged on the KVM host and not read over a remote connection: the verdict rests on the screen, the agent and the events".into(),
            );
        }
        let began = Instant::now();
        let (mut next_screen, mut next_agent) = (began, began + AGENT_EVERY);
        let mut stopped_at = None;
        while seen.finding.is_none() {
            interrupt::check()?;
            let now = Instant::now();
            seen.watched = now - began;
            self.look_at_console(&mut seen);
            self.look_at_events(&mut seen);
            if seen.finding.is_some() {
                break;
            }
            // A daemon gone ends the events too: not a guest that stopped.
            anyhow::ensure!(self.conn.is_alive(), "watching the copy");
            if self.events.stopped() || !self.running()? {
                stopped_at = Some(seen.watched);
                break;
            }
            if now >= next_screen {
                self.look_at_screen(&mut seen, ocr.is_some(), began, false);
                next_screen = now + SCREEN_EVERY;
            }
            if self.agent && now >= next_agent {
                if let Ok(host) = self.dom.agent_hostname() {
                    seen.finding = Some(verdict::from_agent(&host));
                }
                next_agent = Instant::now() + AGENT_EVERY;
            }
            if seen.finding.is_none() && seen.watched >= self.timeout {
                break;
            }
            std::thread::sleep(TICK);
        }
        self.finish(&mut seen, ocr.is_some(), began, stopped_at);
        Ok(seen)
    }

    /// Whether the throwaway domain still runs; an error when libvirt cannot say (the
    /// connection or the daemon went away), which leaves its record for the rerun.
    fn running(&self) -> Result<bool> {
        match self.conn.domain(self.dom.name())? {
            Some(d) => d.is_active(),
            None => Ok(false),
        }
    }

    /// The last screen and the disks' counters; the verdict when nothing decided it.
    fn finish(&self, seen: &mut Observed, ocr: bool, began: Instant, stopped: Option<Duration>) {
        if stopped.is_none() {
            self.look_at_screen(seen, ocr, began, true);
            for dev in &self.disks {
                match self.dom.disk_io(dev) {
                    Ok((r, w)) => seen.disk_io.push((dev.clone(), r, w)),
                    Err(e) => seen.notes.push(format!("{e:#}")),
                }
            }
        }
        self.look_at_console(seen);
        if seen.finding.is_none() {
            seen.finding = Some(verdict::undecided(self.timeout, stopped));
        }
        if self.agent && seen.finding.as_ref().is_some_and(|f| f.source != "agent") {
            seen.notes.push("the guest agent did not answer".into());
        }
    }

    fn look_at_console(&self, seen: &mut Observed) {
        let Some(log) = &self.console_log else { return };
        let read = || std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned());
        let Ok(text) = read() else { return };
        seen.console = text;
        if seen.finding.is_some() || verdict::from_text(&seen.console, "serial").is_none() {
            return;
        }
        // The line that decided may be half written: read it again once it had time to end.
        std::thread::sleep(LINE_END);
        if let Ok(text) = read() {
            seen.console = text;
        }
        seen.finding = verdict::from_text(&seen.console, "serial");
    }

    fn look_at_events(&self, seen: &mut Observed) {
        seen.reboots = self.events.reboots();
        seen.crashes = self.events.crashes();
        if seen.finding.is_none() {
            seen.finding = verdict::from_events(seen.reboots, seen.crashes, seen.watched);
        }
    }

    /// A screenshot, kept (and read) when the screen changed: not one of the last two
    /// screens (a blinking cursor alternates between two), and not the same text as the last
    /// one kept. `last` keeps it whenever it differs from the last one kept.
    fn look_at_screen(&self, seen: &mut Observed, ocr: bool, began: Instant, last: bool) {
        let image = match libvirt::screenshot(self.conn, self.dom) {
            Ok((_, image)) => image,
            Err(e) => {
                let line = format!("no screenshot: {e:#}");
                if !seen.notes.contains(&line) {
                    seen.notes.push(line);
                }
                return;
            }
        };
        let blink = seen.recent.contains(&image);
        if seen.last_screen.as_ref() == Some(&image) || (blink && !last) {
            return;
        }
        seen.recent.insert(0, image.clone());
        seen.recent.truncate(2);
        let text = if ocr { read_screen(&image) } else { None };
        let same_text = text.is_some() && seen.shots.last().map(|s| &s.text) == Some(&text);
        if same_text && !last {
            return;
        }
        if seen.finding.is_none() {
            seen.finding = text
                .as_deref()
                .and_then(|t| verdict::from_text(t, "screen"));
        }
        let at_ms = began.elapsed().as_millis() as u64;
        let name = format!("screen-{:03}-{:06}ms.png", seen.shots.len() + 1, at_ms);
        let file = self.shots_dir.as_ref().and_then(|d| {
            let path = d.join(&name);
            std::fs::write(&path, &image).ok().map(|_| name.clone())
        });
        seen.shots.push(Shot { file, at_ms, text });
        seen.last_screen = Some(image);
    }
}

/// The screen's text by tesseract, None when it cannot read it.
fn read_screen(png: &[u8]) -> Option<String> {
    let dir = tempfile_dir()?;
    let path = dir.join("screen.png");
    std::fs::write(&path, png).ok()?;
    let out = Command::new("tesseract")
        .arg(&path)
        .arg("stdout")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A private folder for one OCR run.
fn tempfile_dir() -> Option<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vmdkimport-ocr-{}-{n}", std::process::id()));
    std::fs::create_dir(&dir).ok()?;
    Some(dir)
}
