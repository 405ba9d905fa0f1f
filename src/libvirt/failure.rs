//! Failures the operator acts on, each said in one line instead of the layers' chain of errors: the daemon went away (a chain ending in "Broken pipe"), the storage is full.

use super::Conn;

impl Conn {
    /// Whether the daemon still answers on this connection (`virConnectIsAlive`).
    pub fn is_alive(&self) -> bool {
        self.raw().is_alive().unwrap_or(false)
    }
}

/// `err` as an import should report it: a lost daemon or a full pool said plainly, with
/// what was being done and what to do next; any other error as it is.
pub fn explain(conn: &Conn, err: anyhow::Error) -> anyhow::Error {
    if super::sockets::severed() {
        return err; // we closed it: the caller says why
    }
    if !conn.is_alive() {
        let uri = conn.uri();
        return anyhow::anyhow!(
            "lost the connection to libvirtd at {uri} while {err}: the daemon stopped or \
             restarted; nothing of it is marked done: once `virsh -c {uri} version` answers \
             again, rerun the same command"
        );
    }
    if is_no_space(&err) {
        return anyhow::anyhow!(
            "no space left on the storage while {err} ({}): nothing of it is marked done; \
             free space there (or grow the pool), then rerun the same command",
            root_cause(&err)
        );
    }
    err
}

/// Whether the storage ran out of space on the way: ENOSPC from a write of ours, or from
/// the daemon's, which only reaches us as its message.
fn is_no_space(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(nix::libc::ENOSPC))
            || e.to_string().contains("No space left on device")
    })
}

/// The innermost message of `err`'s chain.
fn root_cause(err: &anyhow::Error) -> String {
    err.chain()
        .last()
        .map(|e| e.to_string())
        .unwrap_or_default()
}
