//! The libvirt side of an import: connections, pools and volumes, volume streams, domains.

mod conn;
mod domain;
mod failure;
mod ffi;
mod guest;
mod ranges;
mod sockets;
mod stream;
mod volume;

pub use conn::{connect, uri_is_local, Conn};
pub use domain::{parse_disk_sources, BlockJob, DiskKind, DiskSource, Dom};
pub use failure::explain;
pub use guest::{screenshot, Events};
pub use ranges::{upload_ranges, ImageRange, OpenRange};
pub use sockets::sever_all;
pub use stream::{
    download, download_into, is_zero, repair_file_length, upload_at, upload_image,
    upload_image_fresh, upload_within, Download, UploadStats,
};
pub use volume::{volume_xml, Pool, Vol};

pub use crate::image_read::{Extent, ImageRead};
