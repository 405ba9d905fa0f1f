//! Shared harness for the fuzz targets: a scratch folder for inputs, and the properties every reader must keep.

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use vmdkimport::image_read::Extent;
use vmdkimport::vmdk::{BaseImage, Chain, OpenOptions, Source};

/// Pieces (or base extents) looked at per input: enough to reach every table of a seed, few
/// enough that a huge but valid disk does not read as a hang.
pub const MAX_STEPS: usize = 4096;

/// Files of the whole-chain input, in the order their parts come; seeds use these names.
pub const CHAIN_FILES: [&str; 6] = [
    "top.vmdk",
    "top-delta.vmdk",
    "mid.vmdk",
    "mid-sesparse.vmdk",
    "base.vmdk",
    "base-flat.vmdk",
];

/// Separates the parts of a whole-chain input (no format writes these bytes).
pub const PART_SEPARATOR: &[u8] = b"\n@@VMDKFUZZ-NEXT-FILE@@\n";

/// This process's scratch folder (on tmpfs when there is one).
pub fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = root.join(format!("vmdkfuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the scratch folder");
        dir
    })
}

/// Write `data` as `name` in the scratch folder and return its path.
pub fn put(name: &str, data: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, data).expect("writing a fuzz input");
    p
}

/// Open `data` as one bare delta extent, after forcing its first bytes to `magic` (so the
/// fuzzer spends its time past the sniffing), and check the chain if it is accepted.
pub fn one_extent(name: &str, magic: &[u8], data: &[u8]) {
    let mut input = data.to_vec();
    if input.len() < magic.len() {
        return;
    }
    input[..magic.len()].copy_from_slice(magic);
    let p = put(name, &input);
    if let Ok(chain) = Chain::open_deltas(&[p], &OpenOptions::default()) {
        check_pieces(&chain);
    }
}

/// What an accepted chain promises: pieces ascending, non-empty, inside the capacity, and
/// data pieces inside their file and readable.
pub fn check_pieces(chain: &Chain) {
    let capacity = chain.capacity();
    let mut last_end = 0u64;
    for piece in chain.pieces().take(MAX_STEPS) {
        let Ok(p) = piece else { return };
        assert!(p.len > 0, "empty piece at {}", p.offset);
        assert!(
            p.offset >= last_end,
            "piece at {} overlaps the one before (ends {last_end})",
            p.offset
        );
        let end = p.offset.checked_add(p.len).expect("piece end overflows");
        assert!(
            end <= capacity,
            "piece {}+{} past the capacity {capacity}",
            p.offset,
            p.len
        );
        if let Source::Data { file, offset } = &p.source {
            let file_len = file.file.size().expect("the data file's size");
            let data_end = offset.checked_add(p.len).expect("data end overflows");
            assert!(
                data_end <= file_len,
                "piece data {offset}+{} past the file's {file_len} bytes",
                p.len
            );
            let mut buf = [0u8; 512];
            let n = p.len.min(512) as usize;
            p.read_at(0, &mut buf[..n])
                .expect("reading an accepted piece");
        }
        last_end = end;
    }
}

/// What an accepted base promises: its reader never says more than the capacity, and reading
/// its last byte works.
pub fn check_base(base: &BaseImage) {
    let capacity = base.capacity;
    let Ok(mut r) = base.reader() else { return };
    let mut pos = 0u64;
    let mut buf = vec![0u8; 4096];
    for _ in 0..MAX_STEPS {
        if pos >= capacity {
            break;
        }
        match r.next_extent(1 << 20) {
            Ok(Extent::Zeros(n)) => {
                assert!(n > 0, "empty zero extent at {pos}");
                pos = pos.checked_add(n).expect("position overflows");
                assert!(pos <= capacity, "zeros past the capacity {capacity}");
            }
            Ok(Extent::Data(n)) => {
                assert!(n > 0, "empty data extent at {pos}");
                let want = n.min(buf.len() as u64) as usize;
                match r.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => return,
                    Ok(got) => pos += got as u64,
                }
                assert!(pos <= capacity, "data past the capacity {capacity}");
            }
            Err(_) => return,
        }
    }
    if capacity > 0 {
        let _ = base.read_at(capacity - 1, &mut [0u8; 1]);
    }
}
