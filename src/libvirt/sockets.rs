//! The sockets of this process's libvirt connections, found when each opens, so that the watchdog can shut them down under a call that would otherwise wait forever.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::sys::socket::{shutdown, Shutdown};
use nix::sys::stat::{fstat, SFlag};

/// Socket fds of libvirt connections, with the inode each had: a number closed and reused
/// for another socket is never shut down.
static SOCKETS: Mutex<Vec<(RawFd, u64)>> = Mutex::new(Vec::new());

/// The sockets this process has open now: fd and inode.
fn open_sockets() -> HashMap<RawFd, u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|fd| Some((fd, socket_inode(fd)?)))
        .collect()
}

fn socket_inode(fd: RawFd) -> Option<u64> {
    // SAFETY: the fd is only borrowed for one fstat; a number that is not (or no longer) open
    // makes fstat fail with EBADF, which reads as "not a socket".
    let st = fstat(unsafe { BorrowedFd::borrow_raw(fd) }).ok()?;
    (SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK).then_some(st.st_ino)
}

/// Run `open` (which opens one libvirt connection) and remember the sockets it made. The
/// connection's own socket (unix, TCP, or the pair to an ssh tunnel) is the only one libvirt's
/// client makes; a socket another thread opened meanwhile would be shut down too when the
/// run is being ended anyway, which is harmless.
pub(super) fn opened_by<T>(open: impl FnOnce() -> T) -> T {
    let before = open_sockets();
    let made = open();
    let new: Vec<(RawFd, u64)> = open_sockets()
        .into_iter()
        .filter(|(fd, ino)| before.get(fd) != Some(ino))
        .collect();
    let mut all = SOCKETS.lock().expect("no panic holding the sockets");
    all.retain(|(fd, ino)| socket_inode(*fd) == Some(*ino));
    all.extend(new);
    made
}

/// Set once [`sever_all`] ran: a lost connection after that is this process's doing.
static SEVERED: AtomicBool = AtomicBool::new(false);

/// Whether this process shut its libvirt connections down ([`sever_all`]).
pub fn severed() -> bool {
    SEVERED.load(Ordering::SeqCst)
}

/// Shut down every libvirt connection's socket still open: each call waiting on one returns
/// with an error at once (end of file), and no new call can start on it.
pub fn sever_all() {
    SEVERED.store(true, Ordering::SeqCst);
    let all = SOCKETS.lock().expect("no panic holding the sockets");
    for &(fd, ino) in all.iter() {
        // The inode checked first: the number may have been closed and given to another file.
        if socket_inode(fd) == Some(ino) {
            let _ = shutdown(fd, Shutdown::Both);
        }
    }
}
