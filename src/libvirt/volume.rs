//! Storage pools and volumes: finding them, creating a raw volume fit for an LV, their sizes and paths.

use anyhow::{bail, Context, Result};
use quick_xml::escape::escape;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use super::Conn;

/// A storage pool, known to be active when it was looked up.
pub struct Pool {
    pub(crate) conn: Conn,
    pub(crate) pool: StoragePool,
    name: String,
}

/// A storage volume, with the connection its streams are opened on.
pub struct Vol {
    pub(crate) conn: Conn,
    pub(crate) vol: StorageVol,
    name: String,
    pool_name: String,
    path: String,
}

impl Conn {
    /// The active pool `name`. A pool that exists but is not running is an error that says so
    /// (volumes of an inactive pool can be neither created nor written).
    pub fn pool(&self, name: &str) -> Result<Pool> {
        let pool = self.raw().lookup_storage_pool_by_name(name).map_err(|e| {
            if e.code().is(ErrorNumber::NoStoragePool) {
                anyhow::anyhow!("storage pool '{name}' not found on {}", self.uri())
            } else {
                anyhow::Error::new(e).context(format!(
                    "looking up storage pool '{name}' on {}",
                    self.uri()
                ))
            }
        })?;
        let active = pool
            .is_active()
            .with_context(|| format!("asking whether storage pool '{name}' is active"))?;
        if !active {
            bail!(
                "storage pool '{name}' on {} is not active (start it with: virsh -c {} pool-start {name})",
                self.uri(),
                self.uri()
            );
        }
        Ok(Pool {
            conn: self.clone(),
            pool,
            name: name.to_owned(),
        })
    }

    /// Create raw volume `name` of `capacity` bytes in pool `pool`.
    pub fn create_volume(&self, pool: &str, name: &str, capacity: u64) -> Result<Vol> {
        self.pool(pool)?.create_volume(name, capacity)
    }

    /// The volume whose target path is `path` (a file in a dir pool, an LV's device node...).
    pub fn volume_by_path(&self, path: &str) -> Result<Vol> {
        let vol = self
            .raw()
            .lookup_storage_vol_by_path(path)
            .with_context(|| format!("no storage volume has path {path} on {}", self.uri()))?;
        Vol::new(self.clone(), vol)
    }
}

impl Pool {
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Create raw volume `name` of `capacity` bytes.
    ///
    /// The XML has no `<allocation>`: libvirt then allocates the full capacity, so a logical
    /// pool makes a plain LV (an allocation below capacity would make a snapshot LV that
    /// breaks when full). LVM may round the size up to its extent size: read `Vol::capacity`.
    pub fn create_volume(&self, name: &str, capacity: u64) -> Result<Vol> {
        let xml = volume_xml(name, capacity);
        let vol = StorageVol::create_xml(&self.pool, &xml, 0).with_context(|| {
            format!(
                "creating volume '{name}' of {capacity} bytes in pool '{}'",
                self.name
            )
        })?;
        Vol::new(self.conn.clone(), vol)
    }

    /// Volume `name` of this pool.
    pub fn volume(&self, name: &str) -> Result<Vol> {
        self.find_volume(name)?
            .with_context(|| format!("volume '{name}' not found in pool '{}'", self.name))
    }

    /// Volume `name` of this pool, or `None` when it does not exist.
    pub fn find_volume(&self, name: &str) -> Result<Option<Vol>> {
        match self.pool.lookup_storage_vol_by_name(name) {
            Ok(vol) => Ok(Some(Vol::new(self.conn.clone(), vol)?)),
            Err(e) if e.code().is(ErrorNumber::NoStorageVolume) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "looking up volume '{name}' in pool '{}'",
                self.name
            ))),
        }
    }

    /// Rescan the pool's volumes (after writing a volume behind libvirt's back, for example).
    pub fn refresh(&self) -> Result<()> {
        self.pool
            .refresh(0)
            .with_context(|| format!("refreshing storage pool '{}'", self.name))
    }

    /// The underlying `virt` pool.
    pub fn raw(&self) -> &StoragePool {
        &self.pool
    }
}

impl Vol {
    fn new(conn: Conn, vol: StorageVol) -> Result<Vol> {
        let name = vol.name().context("reading a storage volume's name")?;
        let path = vol
            .path()
            .with_context(|| format!("reading the path of volume '{name}'"))?;
        let pool_name = vol
            .lookup_storage_pool()
            .and_then(|p| p.name())
            .with_context(|| format!("finding the pool of volume '{name}'"))?;
        Ok(Vol {
            conn,
            vol,
            name,
            pool_name,
            path,
        })
    }

    /// The same volume on a new connection of its own to the same URI, for a stream that must
    /// not share a connection with other calls (see `import::write::read_ahead`).
    pub fn reopen(&self) -> Result<Vol> {
        let conn = super::connect(Some(self.conn.uri()))?;
        conn.pool(&self.pool_name)?.volume(&self.name)
    }

    /// The volume's name in its pool.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the pool holding the volume.
    pub fn pool_name(&self) -> &str {
        &self.pool_name
    }

    /// The volume's target path on the host running libvirtd.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The volume's capacity in bytes, as libvirt reports it now.
    pub fn capacity(&self) -> Result<u64> {
        let info = self
            .vol
            .info()
            .with_context(|| format!("reading the capacity of volume '{}'", self.describe()))?;
        Ok(info.capacity)
    }

    /// Bytes the volume occupies on its storage (sparse files allocate less than capacity).
    pub fn allocation(&self) -> Result<u64> {
        let info = self
            .vol
            .info()
            .with_context(|| format!("reading the allocation of volume '{}'", self.describe()))?;
        Ok(info.allocation)
    }

    /// Whether libvirt reports the volume as a block device (an LV, a disk partition) rather
    /// than a file. A dir pool reports a symlink to a device as a file: for the direct-IO path,
    /// stat `path()` instead.
    pub fn is_block(&self) -> Result<bool> {
        let info = self
            .vol
            .info()
            .with_context(|| format!("reading the type of volume '{}'", self.describe()))?;
        Ok(info.kind == virt::sys::VIR_STORAGE_VOL_BLOCK)
    }

    /// The pool holding the volume.
    pub fn pool(&self) -> Result<Pool> {
        self.conn.pool(&self.pool_name)
    }

    /// The connection the volume was found on.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Delete the volume from its pool.
    pub fn delete(&self) -> Result<()> {
        self.vol
            .delete(0)
            .with_context(|| format!("deleting volume '{}'", self.describe()))
    }

    /// "pool/volume", for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.pool_name, self.name)
    }

    /// The underlying `virt` volume.
    pub fn raw(&self) -> &StorageVol {
        &self.vol
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

impl std::fmt::Debug for Vol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vol")
            .field("pool", &self.pool_name)
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

/// Volume XML for a raw volume with no `<allocation>` (see `Pool::create_volume`).
pub fn volume_xml(name: &str, capacity: u64) -> String {
    format!(
        "<volume>\n  <name>{}</name>\n  <capacity unit='bytes'>{capacity}</capacity>\n  <target>\n    <format type='raw'/>\n  </target>\n</volume>\n",
        escape(name)
    )
}

#[cfg(test)]
mod tests {
    use super::volume_xml;

    #[test]
    fn volume_xml_has_no_allocation_and_escapes_the_name() {
        let xml = volume_xml("a<b&c", 1 << 30);
        assert!(!xml.contains("allocation"), "{xml}");
        assert!(xml.contains("<name>a&lt;b&amp;c</name>"), "{xml}");
        assert!(
            xml.contains("<capacity unit='bytes'>1073741824</capacity>"),
            "{xml}"
        );
        assert!(xml.contains("<format type='raw'/>"), "{xml}");
    }
}
