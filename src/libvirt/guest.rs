//! A running guest seen from outside: transient domains, screenshots, lifecycle events, disk counters and the guest agent.

use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use virt::stream::Stream;
use virt::sys;

use super::ffi::{self, EventCounts};
use super::{Conn, Dom};

/// A screenshot larger than this is not a screen: refuse rather than hold it in memory.
const MAX_SCREENSHOT: usize = 64 << 20;

impl Conn {
    /// Start a transient domain (never defined: it is gone once it stops) from `xml`, paused:
    /// no guest instruction runs before [`Dom::resume`].
    pub fn create_transient_paused(&self, xml: &str, name: &str) -> Result<Dom> {
        self.raw()
            .create_domain_xml(xml, sys::VIR_DOMAIN_START_PAUSED)
            .with_context(|| format!("starting the transient domain '{name}' on {}", self.uri()))?;
        self.domain(name)?
            .with_context(|| format!("domain '{name}' is gone right after it started"))
    }
}

impl Dom {
    /// Let a paused domain run.
    pub fn resume(&self) -> Result<()> {
        self.raw()
            .resume()
            .with_context(|| format!("resuming domain '{}'", self.name()))?;
        Ok(())
    }

    /// Bytes read and written on disk `dev` since the domain started (`virDomainBlockStats`).
    pub fn disk_io(&self, dev: &str) -> Result<(u64, u64)> {
        let s = self
            .raw()
            .block_stats(dev)
            .with_context(|| format!("disk counters of {dev} in domain '{}'", self.name()))?;
        Ok((s.rd_bytes.max(0) as u64, s.wr_bytes.max(0) as u64))
    }

    /// The guest's host name as its QEMU guest agent reports it; an error when no agent answers.
    pub fn agent_hostname(&self) -> Result<String> {
        self.raw()
            .hostname(sys::VIR_DOMAIN_GET_HOSTNAME_AGENT)
            .with_context(|| format!("asking the guest agent of domain '{}'", self.name()))
    }
}

/// The screen of `dom` (`virDomainScreenshot`): the MIME type QEMU chose and the image.
pub fn screenshot(conn: &Conn, dom: &Dom) -> Result<(String, Vec<u8>)> {
    let mut stream = ManuallyDrop::new(Stream::new(conn.raw(), 0).context("a screenshot stream")?);
    let got = read_screenshot(dom, &stream);
    if got.is_err() {
        let _ = ffi::stream_abort(&stream);
    }
    ffi::stream_free(&mut stream);
    got.with_context(|| format!("taking a screenshot of domain '{}'", dom.name()))
}

fn read_screenshot(dom: &Dom, stream: &Stream) -> Result<(String, Vec<u8>)> {
    let mime = dom.raw().screenshot(stream, 0, 0)?;
    let mut image = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        let n = stream.recv(&mut chunk)?;
        if n <= 0 {
            break;
        }
        image.extend_from_slice(&chunk[..n as usize]);
        ensure!(image.len() <= MAX_SCREENSHOT, "over {MAX_SCREENSHOT} bytes");
    }
    ffi::stream_finish(stream)?;
    Ok((mime, image))
}

/// A domain's reboots, crashes and stop, counted from libvirt's events while this lives.
pub struct Events {
    conn: Conn,
    ids: Vec<i32>,
    counts: Arc<EventCounts>,
}

impl Events {
    /// Start counting `dom`'s events.
    pub fn watch(conn: &Conn, dom: &Dom) -> Result<Events> {
        let counts = Arc::new(EventCounts::default());
        let ids = ffi::register_domain_events(conn.raw(), dom.raw(), &counts)
            .with_context(|| format!("watching the events of domain '{}'", dom.name()))?;
        Ok(Events {
            conn: conn.clone(),
            ids,
            counts,
        })
    }

    pub fn reboots(&self) -> u32 {
        self.counts.reboots.load(Ordering::SeqCst)
    }

    pub fn crashes(&self) -> u32 {
        self.counts.crashes.load(Ordering::SeqCst)
    }

    pub fn stopped(&self) -> bool {
        self.counts.stopped.load(Ordering::SeqCst)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        ffi::deregister_events(self.conn.raw(), &self.ids);
    }
}
