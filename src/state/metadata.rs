//! The import state and the overlay records in a domain's `<metadata>`, read and written
//! through libvirt's metadata calls (what each element holds, and libvirt's quirks with
//! namespaces, are in [`crate::state`]).

use anyhow::{Context, Result};

use super::{ImportState, OverlayRecord};
use crate::libvirt::Dom;

/// The import state in `dom`'s metadata, if it has one.
pub fn read(dom: &Dom) -> Result<Option<ImportState>> {
    match dom.metadata(super::NS_URI)? {
        Some(xml) => Ok(Some(ImportState::from_xml(&xml).with_context(|| {
            format!("domain '{}': reading the import state", dom.name())
        })?)),
        None => Ok(None),
    }
}

/// Record `state` in `dom`'s metadata, replacing what was there.
pub fn write(dom: &Dom, state: &ImportState) -> Result<()> {
    dom.set_metadata(super::NS_URI, super::NS_PREFIX, &state.to_xml())
        .with_context(|| format!("domain '{}': recording the import state", dom.name()))
}

/// The overlay records in `dom`'s metadata (none when it has no element).
pub fn read_overlays(dom: &Dom) -> Result<Vec<OverlayRecord>> {
    match dom.metadata(super::OVERLAY_NS_URI)? {
        Some(xml) => super::overlays_from_xml(&xml)
            .with_context(|| format!("domain '{}': reading the overlay records", dom.name())),
        None => Ok(Vec::new()),
    }
}

/// Remove the overlay records' element from `dom`'s metadata, as before any overlay.
pub fn remove_overlays(dom: &Dom) -> Result<()> {
    dom.remove_metadata(super::OVERLAY_NS_URI)
        .with_context(|| format!("domain '{}': removing the overlay records", dom.name()))
}

/// Record the overlay records `records` in `dom`'s metadata, replacing what was there.
pub fn write_overlays(dom: &Dom, records: &[OverlayRecord]) -> Result<()> {
    dom.set_metadata(
        super::OVERLAY_NS_URI,
        super::OVERLAY_NS_PREFIX,
        &super::overlays_to_xml(records),
    )
    .with_context(|| format!("domain '{}': recording the overlay's step", dom.name()))
}
