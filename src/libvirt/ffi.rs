//! The few raw libvirt calls the `virt` 0.5 crate wraps unsafely or not at all: stream holes, and closing handles without panicking.

use std::mem::ManuallyDrop;

use virt::connect::Connect;
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
