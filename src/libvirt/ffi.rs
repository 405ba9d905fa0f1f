//! The few raw libvirt calls the `virt` 0.5 crate wraps unsafely or not at all: stream holes, closing handles without panicking, block commit jobs.

use std::mem::ManuallyDrop;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::Error;
use virt::stream::Stream;

/// Send a hole of `len` bytes on a sparse upload stream (`virStreamSendHole`).
pub(crate) fn stream_send_hole(stream: &Stream, len: i64) -> Result<(), Error> {
    // SAFETY: `stream` is a live `virt::stream::Stream`, so its pointer is a valid, referenced
    // virStreamPtr for the duration of this call; virStreamSendHole neither keeps nor frees it.
    let rc = unsafe { virt::sys::virStreamSendHole(stream.as_ptr(), len, 0) };
    if rc < 0 {
        Err(Error::last_error())
    } else {
        Ok(())
    }
}

/// Finish a stream (`virStreamFinish`) without consuming it, so the caller decides when to free it.
pub(crate) fn stream_finish(stream: &Stream) -> Result<(), Error> {
    // SAFETY: as in `stream_send_hole`: a valid stream pointer, borrowed only for the call.
    let rc = unsafe { virt::sys::virStreamFinish(stream.as_ptr()) };
    if rc < 0 {
        Err(Error::last_error())
    } else {
        Ok(())
    }
}

/// Abort a stream (`virStreamAbort`); errors are returned for the caller to ignore or report.
pub(crate) fn stream_abort(stream: &Stream) -> Result<(), Error> {
    // SAFETY: as in `stream_send_hole`.
    let rc = unsafe { virt::sys::virStreamAbort(stream.as_ptr()) };
    if rc < 0 {
        Err(Error::last_error())
    } else {
        Ok(())
    }
}

/// Drop our reference on a stream without the panic `virt`'s `Drop` raises when the free fails.
/// Call only from the owner's `Drop`: the stream must not be used afterwards.
pub(crate) fn stream_free(stream: &mut ManuallyDrop<Stream>) {
    // SAFETY: the owner holds one reference (from `Stream::new`) and calls this once, from its
    // Drop, so the stream is never used again; being ManuallyDrop, virt's own Drop does not
    // free it a second time.
    unsafe {
        virt::sys::virStreamFree(stream.as_ptr());
    }
}

/// Drop our reference on a connection without the panic `virt`'s `Drop` raises when close fails
/// (a remote connection whose socket is gone, for example).
/// Call only from the owner's `Drop`: the connection must not be used afterwards.
pub(crate) fn connect_close(conn: &mut ManuallyDrop<Connect>) {
    // SAFETY: the owner holds one reference (from `Connect::open` or a clone) and calls this
    // once, from its Drop; being ManuallyDrop, virt's Drop does not close it a second time.
    unsafe {
        virt::sys::virConnectClose(conn.as_ptr());
    }
}

/// What `virDomainGetBlockJobInfo` says of a disk's block job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockJobInfo {
    pub kind: i32,
    pub cur: u64,
    pub end: u64,
}

/// `disk` (a target name such as `vda`) as a C string, or the error libvirt would give for it.
fn disk_cstr(disk: &str) -> Result<std::ffi::CString, Error> {
    std::ffi::CString::new(disk).map_err(|_| Error::last_error())
}

/// Start an active block commit of `disk`'s top image into its backing file
/// (`virDomainBlockCommit` with `VIR_DOMAIN_BLOCK_COMMIT_ACTIVE`, base and top left to
/// libvirt), at most `bandwidth` bytes per second (0: no limit).
pub(crate) fn block_commit_active(dom: &Domain, disk: &str, bandwidth: u64) -> Result<(), Error> {
    let d = disk_cstr(disk)?;
    // SAFETY: `dom` is a live `virt::domain::Domain`, so its pointer is a valid, referenced
    // virDomainPtr for this call; `d` is a NUL-terminated string that outlives the call; NULL
    // base and top are documented as "the backing file" and "the active image"; libvirt keeps
    // none of these pointers.
    let rc = unsafe {
        virt::sys::virDomainBlockCommit(
            dom.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            bandwidth as std::os::raw::c_ulong,
            virt::sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                | virt::sys::VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES,
        )
    };
    if rc < 0 {
        Err(Error::last_error())
    } else {
        Ok(())
    }
}

/// The block job running on `disk`, if any (`virDomainGetBlockJobInfo`).
pub(crate) fn block_job_info(dom: &Domain, disk: &str) -> Result<Option<BlockJobInfo>, Error> {
    let d = disk_cstr(disk)?;
    let mut info = virt::sys::virDomainBlockJobInfo {
        type_: 0,
        bandwidth: 0,
        cur: 0,
        end: 0,
    };
    // SAFETY: as in `block_commit_active` for `dom` and `d`; `info` is a properly sized
    // struct on our stack that libvirt fills and does not keep.
    let rc = unsafe { virt::sys::virDomainGetBlockJobInfo(dom.as_ptr(), d.as_ptr(), &mut info, 0) };
    match rc {
        rc if rc < 0 => Err(Error::last_error()),
        0 => Ok(None),
        _ => Ok(Some(BlockJobInfo {
            kind: info.type_,
            cur: info.cur,
            end: info.end,
        })),
    }
}

/// End `disk`'s block job (`virDomainBlockJobAbort`), pivoting to the job's target when
/// `pivot`; waits for the pivot to complete.
pub(crate) fn block_job_abort(dom: &Domain, disk: &str, pivot: bool) -> Result<(), Error> {
    let d = disk_cstr(disk)?;
    let flags = if pivot {
        virt::sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT
    } else {
        0
    };
    // SAFETY: as in `block_commit_active`.
    let rc = unsafe { virt::sys::virDomainBlockJobAbort(dom.as_ptr(), d.as_ptr(), flags) };
    if rc < 0 {
        Err(Error::last_error())
    } else {
        Ok(())
    }
}

/// What a domain's lifecycle and reboot events counted, shared with the callbacks.
#[derive(Debug, Default)]
pub(crate) struct EventCounts {
    pub reboots: std::sync::atomic::AtomicU32,
    pub crashes: std::sync::atomic::AtomicU32,
    /// The domain stopped (for a transient domain: it is gone).
    pub stopped: std::sync::atomic::AtomicBool,
}

type GenericCallback = unsafe extern "C" fn(
    virt::sys::virConnectPtr,
    virt::sys::virDomainPtr,
    *mut std::os::raw::c_void,
);
type LifecycleCallback = unsafe extern "C" fn(
    virt::sys::virConnectPtr,
    virt::sys::virDomainPtr,
    std::os::raw::c_int,
    std::os::raw::c_int,
    *mut std::os::raw::c_void,
);

unsafe extern "C" fn on_reboot(
    _c: virt::sys::virConnectPtr,
    _d: virt::sys::virDomainPtr,
    opaque: *mut std::os::raw::c_void,
) {
    // SAFETY: `opaque` is the Arc<EventCounts> pointer given at registration, kept alive until
    // libvirt calls `free_counts` after the callback is deregistered.
    let counts = unsafe { &*(opaque as *const EventCounts) };
    counts
        .reboots
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

unsafe extern "C" fn on_lifecycle(
    _c: virt::sys::virConnectPtr,
    _d: virt::sys::virDomainPtr,
    event: std::os::raw::c_int,
    _detail: std::os::raw::c_int,
    opaque: *mut std::os::raw::c_void,
) {
    use std::sync::atomic::Ordering::SeqCst;
    // SAFETY: as in `on_reboot`.
    let counts = unsafe { &*(opaque as *const EventCounts) };
    match event as u32 {
        virt::sys::VIR_DOMAIN_EVENT_CRASHED => {
            counts.crashes.fetch_add(1, SeqCst);
        }
        virt::sys::VIR_DOMAIN_EVENT_STOPPED => counts.stopped.store(true, SeqCst),
        _ => {}
    }
}

unsafe extern "C" fn free_counts(opaque: *mut std::os::raw::c_void) {
    // SAFETY: `opaque` came from `Arc::into_raw` in `register_domain_events`, one per
    // registration, and libvirt calls this once per registration when it drops it.
    drop(unsafe { std::sync::Arc::from_raw(opaque as *const EventCounts) });
}

/// Count `dom`'s reboot, crash and stop events into `counts` (libvirt's event loop, started
/// with the connection, runs the callbacks); the callback ids, for [`deregister_events`].
pub(crate) fn register_domain_events(
    conn: &Connect,
    dom: &Domain,
    counts: &std::sync::Arc<EventCounts>,
) -> Result<Vec<i32>, Error> {
    // SAFETY: the lifecycle callback has the signature libvirt calls for
    // VIR_DOMAIN_EVENT_ID_LIFECYCLE; the cast is what libvirt's VIR_DOMAIN_EVENT_CALLBACK macro does.
    let lifecycle: GenericCallback =
        unsafe { std::mem::transmute::<LifecycleCallback, GenericCallback>(on_lifecycle) };
    let mut ids = Vec::new();
    for (id, cb) in [
        (
            virt::sys::VIR_DOMAIN_EVENT_ID_REBOOT,
            on_reboot as GenericCallback,
        ),
        (virt::sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
    ] {
        let opaque = std::sync::Arc::into_raw(counts.clone()) as *mut std::os::raw::c_void;
        // SAFETY: `conn` and `dom` are live handles for the call; `opaque` holds one Arc
        // reference that libvirt hands to `free_counts` when the registration ends (on failure
        // it is not kept, so it is released here).
        let rc = unsafe {
            virt::sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                dom.as_ptr(),
                id as i32,
                Some(cb),
                opaque,
                Some(free_counts),
            )
        };
        if rc < 0 {
            let err = Error::last_error();
            // SAFETY: libvirt did not take `opaque`: release its reference.
            unsafe { free_counts(opaque) };
            deregister_events(conn, &ids);
            return Err(err);
        }
        ids.push(rc);
    }
    Ok(ids)
}

/// End the registrations `ids` made by [`register_domain_events`]; errors (a closed
/// connection drops them anyway) are ignored.
pub(crate) fn deregister_events(conn: &Connect, ids: &[i32]) {
    for &id in ids {
        // SAFETY: a live connection and an id it returned.
        unsafe {
            virt::sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id);
        }
    }
}
