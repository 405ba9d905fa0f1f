//! What a test boot makes, recorded in the real domain's metadata before it is made, so that the end of the run, a rerun or `--cleanup` removes it even after a kill or a daemon restart.

use anyhow::{Context, Result};

use crate::libvirt::{Conn, Dom};
use crate::xmltree::{self, Element};

/// The namespace of the record: beside the import state, in an element of its own.
pub const NS_URI: &str = "https://virt-vmdkimport.example/ns/testboot/1";
pub const NS_PREFIX: &str = "vmdktestboot";

/// The throwaway domain, and the volumes and files made for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// The throwaway domain's name.
    pub domain: String,
    /// `(pool, volume)` overlays of ours.
    pub volumes: Vec<(String, String)>,
    /// Files on the host: the console log, the NVRAM copy, libvirt's transient overlays.
    pub files: Vec<String>,
}

impl Leftovers {
    fn to_xml(&self) -> String {
        let mut root = Element::new("testboot").attr("domain", &self.domain);
        for (pool, vol) in &self.volumes {
            root = root.child(Element::new("volume").attr("pool", pool).attr("name", vol));
        }
        for f in &self.files {
            root = root.child(Element::new("file").attr("path", f));
        }
        xmltree::to_string(&root)
    }

    fn from_xml(xml: &str) -> Result<Leftovers> {
        let root = xmltree::parse(xml).context("test boot record")?;
        let attr = |e: &Element, k: &str| -> Result<String> {
            e.get_attr(k)
                .map(str::to_string)
                .with_context(|| format!("test boot record: <{}> has no {k}", e.name))
        };
        let mut l = Leftovers {
            domain: attr(&root, "domain")?,
            ..Default::default()
        };
        for e in root.elements() {
            match e.local_name() {
                "volume" => l.volumes.push((attr(e, "pool")?, attr(e, "name")?)),
                "file" => l.files.push(attr(e, "path")?),
                _ => {}
            }
        }
        Ok(l)
    }
}

/// Record `l` in the real domain's metadata (replacing an earlier record).
pub fn record(real: &Dom, l: &Leftovers) -> Result<()> {
    real.set_metadata(NS_URI, NS_PREFIX, &l.to_xml())
        .with_context(|| format!("domain '{}': recording the test boot's names", real.name()))
}

/// The record an earlier test boot left, if any.
pub fn read(real: &Dom) -> Result<Option<Leftovers>> {
    real.metadata(NS_URI)?
        .map(|x| Leftovers::from_xml(&x))
        .transpose()
        .with_context(|| format!("domain '{}': reading the test boot's record", real.name()))
}

/// Remove everything `l` names that is still there, then the record; what was removed, as
/// lines for the operator. A step that fails stops it with the record kept, for the next try.
pub fn clean(conn: &Conn, real: &Dom, l: &Leftovers) -> Result<Vec<String>> {
    let mut done = Vec::new();
    if let Some(dom) = conn.domain(&l.domain)? {
        if dom.is_active().unwrap_or(false) {
            match dom.destroy() {
                Ok(()) => done.push(format!("domain '{}' destroyed", l.domain)),
                // It went away by itself meanwhile (a start cut short by the kill).
                Err(_) if conn.domain(&l.domain)?.is_none() => {}
                Err(e) => return Err(e),
            }
        }
        // A throwaway domain is never defined; one that is (not ours) stays.
    }
    for (pool, vol) in &l.volumes {
        let p = conn.pool(pool)?;
        p.refresh().ok();
        if let Some(v) = p.find_volume(vol)? {
            v.delete()?;
            done.push(format!("volume {pool}/{vol} deleted"));
        }
    }
    for f in &l.files {
        done.extend(remove_file(conn, f)?);
    }
    real.remove_metadata(NS_URI)?;
    Ok(done)
}

/// Remove a file of the record: on this host directly, on a remote one through its pool
/// when it is a volume (libvirt's transient overlays), else left with a line saying so.
fn remove_file(conn: &Conn, path: &str) -> Result<Option<String>> {
    if conn.is_local() {
        return match std::fs::remove_file(path) {
            Ok(()) => Ok(Some(format!("{path} removed"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("removing {path}")),
        };
    }
    match conn.volume_by_path(path) {
        Ok(v) => {
            v.delete()?;
            Ok(Some(format!("{path} deleted")))
        }
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips() {
        let l = Leftovers {
            domain: "web1-testboot".into(),
            volumes: vec![("default".into(), "web1-testboot-sdb.qcow2".into())],
            files: vec![
                "/p/web1-disk0.TRANSIENT-web1-testboot".into(),
                "/a&b'c".into(),
            ],
        };
        assert_eq!(Leftovers::from_xml(&l.to_xml()).unwrap(), l);
        assert!(Leftovers::from_xml("<testboot/>").is_err());
    }
}
