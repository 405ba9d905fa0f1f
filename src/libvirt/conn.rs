//! Connections to libvirt: opening one like virsh does, and what the tool needs to know about it.

use std::mem::ManuallyDrop;

use anyhow::{Context, Result};
use virt::connect::Connect;

use super::ffi;

/// An open libvirt connection.
///
/// Wraps `virt::connect::Connect` so that dropping it never panics (virt 0.5's `Drop` panics
/// when `virConnectClose` fails, which a remote connection can do after its socket is gone).
pub struct Conn {
    inner: ManuallyDrop<Connect>,
    uri: String,
}

/// Seconds between keepalive probes, and probes missed before the connection is closed (virsh's
/// own values).
const KEEPALIVE_INTERVAL: i32 = 5;
const KEEPALIVE_COUNT: u32 = 6;

/// libvirt's default event loop, registered before the first connection opens and run by a
/// thread of its own: keepalive needs one.
fn event_loop() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            log::debug!("no libvirt event loop: {e}");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if virt::event::event_run_default_impl().is_err() {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            log::debug!("no libvirt event loop thread: {e}");
        }
    });
}

/// Open a connection to `uri`; `None` means `LIBVIRT_DEFAULT_URI`, else libvirt's own default,
/// as for virsh.
pub fn connect(uri: Option<&str>) -> Result<Conn> {
    // libvirt's default error callback prints every error to stderr, even the ones we expect
    // and handle (a missing domain, absent metadata): we report errors ourselves.
    virt::error::clear_error_callback();
    let env_uri = std::env::var("LIBVIRT_DEFAULT_URI")
        .ok()
        .filter(|u| !u.is_empty());
    let wanted = uri.map(str::to_owned).or(env_uri);
    event_loop();
    let inner =
        super::sockets::opened_by(|| Connect::open(wanted.as_deref())).with_context(|| {
            format!(
                "connecting to libvirt at {}",
                wanted.as_deref().unwrap_or("libvirt's default URI")
            )
        })?;
    let inner = ManuallyDrop::new(inner);
    // A daemon or link that stops answering closes the connection after about
    // KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1) s, failing the calls waiting on it, instead of
    // leaving them waiting for good. Drivers without a daemon (test:///) have no keepalive.
    if let Err(e) = inner.set_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT) {
        log::debug!("no keepalive on this connection: {e}");
    }
    // The URI libvirt actually chose (the default resolves to qemu:///system or session).
    let uri = match inner.uri() {
        Ok(u) => u,
        Err(_) => wanted.unwrap_or_default(),
    };
    log::debug!("connected to libvirt at {uri}");
    Ok(Conn { inner, uri })
}

impl Conn {
    /// The connection's URI as libvirt reports it.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Whether the connection reaches the daemon on this host without a network hop, so that
    /// a volume's path names a file or device this process can open (the direct-IO fast path).
    /// Any URI naming a host is remote, even `qemu+tcp://127.0.0.1/system`.
    pub fn is_local(&self) -> bool {
        uri_is_local(&self.uri)
    }

    /// `"kvm"` when the host's domain capabilities offer KVM, else `"qemu"` (TCG emulation).
    pub fn domain_type(&self) -> &'static str {
        match self
            .inner
            .domain_capabilities(None, None, None, Some("kvm"), 0)
        {
            Ok(xml) if xml.contains("<domain>kvm</domain>") => "kvm",
            _ => "qemu",
        }
    }

    /// The daemon's libvirt version (major * 1,000,000 + minor * 1,000 + release).
    pub fn lib_version(&self) -> Result<u32> {
        self.inner
            .lib_version()
            .map_err(|e| anyhow::anyhow!("asking {} for its libvirt version: {e}", self.uri))
    }

    /// The underlying `virt` connection, for calls this module does not wrap.
    pub fn raw(&self) -> &Connect {
        &self.inner
    }
}

impl Clone for Conn {
    fn clone(&self) -> Self {
        Conn {
            inner: ManuallyDrop::new((*self.inner).clone()),
            uri: self.uri.clone(),
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("uri", &self.uri).finish()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        ffi::connect_close(&mut self.inner);
    }
}

/// Whether a libvirt URI reaches a daemon on this host: no host part (`qemu:///system`,
/// `qemu+unix:///system`, `test:///default`, a bare driver name such as `qemu`).
pub fn uri_is_local(uri: &str) -> bool {
    let Some((_scheme, rest)) = uri.split_once("://") else {
        // Not URI-shaped ("qemu", an alias resolved by libvirt): nothing names a host.
        return true;
    };
    // The authority runs up to the first '/', '?' or '#'.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Strip "user@" and ":port".
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host // an IPv6 literal such as [::1]
    } else {
        host.split(':').next().unwrap_or("")
    };
    host.is_empty()
}

#[cfg(test)]
mod tests {
    use super::uri_is_local;

    #[test]
    fn uris_without_a_host_are_local_and_any_host_is_remote() {
        for uri in [
            "qemu:///system",
            "qemu:///session",
            "qemu+unix:///system",
            "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
            "test:///default",
            "qemu",
        ] {
            assert!(uri_is_local(uri), "{uri} should be local");
        }
        for uri in [
            "qemu+tcp://127.0.0.1/system",
            "qemu+ssh://root@kvm1/system",
            "qemu+tls://kvm1:16514/system",
            "qemu+ssh://[::1]/system",
            "qemu://localhost/system",
        ] {
            assert!(!uri_is_local(uri), "{uri} should be remote");
        }
    }
}
