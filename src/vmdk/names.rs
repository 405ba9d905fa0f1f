//! File names found in descriptors are untrusted: keep them inside the descriptor's folder.

use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::descriptor::Descriptor;
use super::error::{show, Error};
use super::runs::DataFile;

/// How files are opened.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Let descriptors name files outside their own folder (absolute, `..`, symlinks out).
    pub allow_outside_paths: bool,
}

/// Opens the data file an extent line names (`name`), for the descriptor that names it.
pub type ExtentOpener<'a> = dyn FnMut(&Descriptor, &str) -> Result<Arc<DataFile>, Error> + 'a;

/// Resolve `name`, written in `descriptor`, against `folder`. Unless `allow_outside`, refuse
/// absolute names, `..`, and names whose symlinks lead out of the folder.
pub(crate) fn resolve(
    folder: &Path,
    name: &str,
    descriptor: &Path,
    allow_outside: bool,
) -> Result<PathBuf, Error> {
    let rel = Path::new(name);
    let joined = folder.join(rel);
    if allow_outside {
        return Ok(joined);
    }
    let refuse = |why: &str| {
        Error::invalid(
            descriptor,
            format!(
                "file name {:?} {why}; it must stay inside the descriptor's folder (--allow-outside-paths overrides)",
                show(rel)
            ),
        )
    };
    if name.is_empty() {
        return Err(refuse("is empty"));
    }
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(refuse("contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("is absolute")),
        }
    }
    let real_folder = folder
        .canonicalize()
        .map_err(|e| Error::io(folder, "resolving folder", e))?;
    let real = joined.canonicalize().map_err(|e| {
        Error::io(
            descriptor,
            format!("opening {:?} named by it", show(rel)),
            e,
        )
    })?;
    if !real.starts_with(&real_folder) {
        return Err(refuse("leads outside the folder through a symlink"));
    }
    Ok(real)
}

/// Open a file for reading; `nofollow` refuses a symlink as the last component (names that
/// went through [`resolve`] are canonical and contain none).
pub(crate) fn open_data(path: &Path, nofollow: bool) -> Result<Arc<DataFile>, Error> {
    let mut o = fs::OpenOptions::new();
    o.read(true);
    if nofollow {
        o.custom_flags(nix::libc::O_NOFOLLOW);
    }
    let file: File = o.open(path).map_err(|e| Error::io(path, "opening", e))?;
    Ok(Arc::new(DataFile::local(path.to_path_buf(), file)))
}

/// Open the file extent line `name` of `d` names on this host: resolved inside the
/// descriptor's folder and opened without following a last symlink, unless `allow_outside`.
pub(crate) fn open_named(
    d: &Descriptor,
    name: &str,
    allow_outside: bool,
) -> Result<Arc<DataFile>, Error> {
    let path = resolve(&d.folder(), name, &d.path, allow_outside)?;
    open_data(&path, !allow_outside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_inside_the_folder_are_fine_outside_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("real.vmdk"), b"x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::os::unix::fs::symlink("../real.vmdk", d.join("sub/in.vmdk")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.join("out.vmdk")).unwrap();
        let desc = d.join("desc.vmdk");
        let ok = resolve(d, "sub/in.vmdk", &desc, false).unwrap();
        assert_eq!(ok, d.join("real.vmdk").canonicalize().unwrap());
        let e = resolve(d, "out.vmdk", &desc, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("through a symlink"), "{e}");
        assert!(resolve(d, "out.vmdk", &desc, true).is_ok());
        let e = resolve(d, "", &desc, false).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = resolve(d, "a\u{1b}[2J/../x", &desc, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\\u{1b}"), "control characters are escaped: {e}");
    }
}
