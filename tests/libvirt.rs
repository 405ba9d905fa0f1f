//! The libvirt layer against the real libvirtd (qemu:///system and qemu+tcp://127.0.0.1/system).

mod util;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::assert_same;
use util::bootimg;
use util::libvirt::{fill_volume, read_volume};
use util::libvirt::{unique_name, TestPool, LOCAL_URI, REMOTE_URI};
use vmdkimport::libvirt::{connect, download_into, upload_at, upload_image, DiskKind};
use vmdkimport::libvirt::{upload_ranges, ImageRange};

const MIB: usize = 1 << 20;

/// Bytes that differ from offset to offset and are never all zero over 64 KiB.
fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(seed as u32 % 32) as u8
                | 1
        })
        .collect()
}

/// An image with data and zero runs of awkward sizes, ending in data at an odd length.
fn mixed_image() -> Vec<u8> {
    let mut img = vec![0u8; 20 * MIB + 12345];
    img[..MIB].copy_from_slice(&data(1, MIB)); // data
                                               // 1..5 MiB zeros; a small island of data inside a zero area, not chunk-aligned
    img[5 * MIB + 100..5 * MIB + 100 + 4096].copy_from_slice(&data(2, 4096));
    img[12 * MIB..13 * MIB + 77].copy_from_slice(&data(3, MIB + 77));
    let n = img.len();
    img[n - 1000..].copy_from_slice(&data(4, 1000));
    img
}

fn expected_volume(img: &[u8], capacity: usize) -> Vec<u8> {
    let mut want = img.to_vec();
    want.resize(capacity, 0);
    want
}

#[test]
fn base_upload_overwrites_every_stale_byte_and_keeps_a_file_volume_sparse() {
    let tp = TestPool::new("base");
    let cap = 32 * MIB;
    let vol = tp.volume("disk", cap as u64);
    // A volume that held someone else's data: not one byte of it may survive.
    fill_volume(&vol, 0x5a);
    let img = mixed_image();
    let path = tp.path("image.raw");
    std::fs::write(&path, &img).unwrap();

    let mut seen = 0;
    let stats = upload_image(&vol, &mut std::fs::File::open(&path).unwrap(), &mut |n| {
        seen = n
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stats.bytes_read, img.len() as u64);
    assert_eq!(seen, img.len() as u64, "progress reached the end");
    assert_eq!(stats.data_bytes + stats.hole_bytes, cap as u64, "{stats:?}");
    assert!(
        stats.hole_bytes >= (cap - img.len()) as u64 + 10 * MIB as u64,
        "{stats:?}"
    );

    assert_eq!(
        vol.capacity().unwrap(),
        cap as u64,
        "the volume keeps its size"
    );
    let got = read_volume(&vol);
    assert_same(
        &got,
        &expected_volume(&img, cap),
        "volume after base upload",
    );
    assert!(
        !got[img.len()..].contains(&0x5a),
        "stale pattern in the tail"
    );

    // The holes stayed holes in the dir pool's file.
    let meta = std::fs::metadata(vol.path()).unwrap();
    assert_eq!(meta.len(), cap as u64, "file length");
    let allocated = meta.blocks() * 512;
    assert!(
        allocated < (cap / 2) as u64,
        "{allocated} bytes allocated for a {cap}-byte volume holding {} data bytes",
        stats.data_bytes
    );
}

#[test]
fn base_upload_from_a_pipe_gives_the_same_bytes() {
    let tp = TestPool::new("pipe");
    let cap = 24 * MIB;
    let vol = tp.volume("disk", cap as u64);
    fill_volume(&vol, 0x5a);
    let img = mixed_image();
    let path = tp.path("image.raw");
    std::fs::write(&path, &img).unwrap();

    let mut child = Command::new("cat")
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let stats = upload_image(&vol, &mut stdout, &mut |_| {}).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(child.wait().unwrap().success());
    assert_eq!(stats.bytes_read, img.len() as u64);
    assert_same(
        &read_volume(&vol),
        &expected_volume(&img, cap),
        "volume after piped upload",
    );
}

#[test]
fn base_upload_writes_real_zeros_into_a_block_device() {
    let tp = TestPool::new("block");
    let cap = 16 * MIB;
    // A block device that holds someone else's data, as a new LV can.
    let backing = tp.path("blockdev.raw");
    std::fs::write(&backing, vec![0x5au8; cap]).unwrap();
    let Some(lo) = util::libvirt::LoopDev::attach(&backing) else {
        eprintln!("SKIPPED: no loop device on this machine");
        return;
    };
    // A dir pool lists a symlink to a block device as a volume; streams open the device.
    std::os::unix::fs::symlink(&lo.dev, tp.pool_dir().join("blk")).unwrap();
    tp.pool.refresh().unwrap();
    let vol = tp.pool.volume("blk").unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(vol.capacity().unwrap(), cap as u64);

    let img = mixed_image();
    let img = &img[..11 * MIB + 333];
    let stats = upload_image(&vol, &mut &img[..], &mut |_| {}).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(stats.hole_bytes > 5 * MIB as u64, "{stats:?}");
    let want = expected_volume(img, cap);
    assert_same(
        &read_volume(&vol),
        &want,
        "block volume read through libvirt",
    );
    // And on the device itself, bypassing libvirt: holes became zeros on the device.
    let mut direct = vec![0u8; cap];
    std::fs::File::open(&lo.dev)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut direct))
        .unwrap();
    assert_same(&direct, &want, "block device read directly");
}

/// `img` cut into `n` ranges (the last one longer), front to back.
fn ranges_of(img: &[u8], n: usize) -> Vec<ImageRange> {
    let per = img.len() / n;
    (0..n)
        .map(|i| ImageRange {
            offset: (i * per) as u64,
            len: if i + 1 == n { img.len() - i * per } else { per } as u64,
        })
        .collect()
}

/// Upload `img` as `n` ranges side by side into `vol`, range `short` (if any) ending early.
fn upload_in_ranges(
    vol: &vmdkimport::libvirt::Vol,
    img: &[u8],
    n: usize,
    short: Option<usize>,
) -> anyhow::Result<vmdkimport::libvirt::UploadStats> {
    let ranges = ranges_of(img, n);
    let open = |i: usize| -> anyhow::Result<Box<dyn std::io::Read + Send>> {
        let r = ranges[i];
        let mut bytes = img[r.offset as usize..(r.offset + r.len) as usize].to_vec();
        if short == Some(i) {
            bytes.truncate(bytes.len() / 2);
        }
        Ok(Box::new(std::io::Cursor::new(bytes)))
    };
    let moved = std::sync::atomic::AtomicU64::new(0);
    let stats = upload_ranges(vol, &ranges, &open, &|n| {
        moved.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    })?;
    assert_eq!(
        moved.into_inner(),
        img.len() as u64,
        "progress saw every byte"
    );
    Ok(stats)
}

#[test]
fn ranges_side_by_side_overwrite_every_stale_byte_and_keep_holes() {
    let tp = TestPool::new("ranges");
    let cap = 32 * MIB;
    let vol = tp.volume("disk", cap as u64);
    fill_volume(&vol, 0x5a);
    let img = mixed_image();
    let want = expected_volume(&img, cap);
    for n in [1, 3, 4] {
        let stats = upload_in_ranges(&vol, &img, n, None).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(stats.bytes_read, img.len() as u64);
        assert_same(&read_volume(&vol), &want, &format!("{n} ranges"));
        assert_eq!(
            vol.capacity().unwrap(),
            cap as u64,
            "the file keeps its length"
        );
        // The zero runs of 1 MiB or more and the tail stay holes.
        assert!(
            vol.allocation().unwrap() < 8 * MIB as u64,
            "{n} ranges: {} bytes allocated",
            vol.allocation().unwrap()
        );
    }
    // A range that ends early fails the upload; the file keeps its length.
    let e = upload_in_ranges(&vol, &img, 4, Some(2)).unwrap_err();
    assert!(format!("{e:#}").contains("ended early"), "{e:#}");
    assert_eq!(vol.capacity().unwrap(), cap as u64);
}

#[test]
fn ranges_side_by_side_write_real_zeros_into_a_block_device() {
    let tp = TestPool::new("rblock");
    let cap = 24 * MIB;
    let backing = tp.path("blockdev.raw");
    std::fs::write(&backing, vec![0x5au8; cap]).unwrap();
    let Some(lo) = util::libvirt::LoopDev::attach(&backing) else {
        eprintln!("SKIPPED: no loop device on this machine");
        return;
    };
    std::os::unix::fs::symlink(&lo.dev, tp.pool_dir().join("blk")).unwrap();
    tp.pool.refresh().unwrap();
    let vol = tp.pool.volume("blk").unwrap_or_else(|e| panic!("{e:#}"));
    let img = mixed_image();
    upload_in_ranges(&vol, &img, 4, None).unwrap_or_else(|e| panic!("{e:#}"));
    let want = expected_volume(&img, cap);
    let mut direct = vec![0u8; cap];
    std::fs::File::open(&lo.dev)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut direct))
        .unwrap();
    assert_same(&direct, &want, "block device read directly");
}

#[test]
fn image_longer_than_the_volume_is_refused() {
    let tp = TestPool::new("long");
    let vol = tp.volume("disk", 4 * MIB as u64);
    let img = data(5, 4 * MIB + 1);
    let err = upload_image(&vol, &mut &img[..], &mut |_| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("longer than volume") && msg.contains("disk.img"),
        "{msg}"
    );
    // The file volume keeps its length, so a second attempt sees the same capacity.
    assert_eq!(vol.capacity().unwrap(), 4 * MIB as u64);
}

/// A reader that gives `ok` bytes of data, then fails (a dropped ssh connection).
struct FailingReader {
    ok: usize,
}

impl std::io::Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("connection reset by peer"));
        }
        let n = buf.len().min(self.ok).min(100_000);
        buf[..n].fill(0x11);
        self.ok -= n;
        Ok(n)
    }
}

impl vmdkimport::libvirt::ImageRead for FailingReader {}

#[test]
fn failing_source_fails_the_upload_and_the_volume_keeps_its_size() {
    let tp = TestPool::new("fail");
    let cap = 24 * MIB as u64;
    let vol = tp.volume("disk", cap);
    let err = upload_image(&vol, &mut FailingReader { ok: 6 * MIB + 5 }, &mut |_| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("connection reset by peer") && msg.contains("reading the image"),
        "{msg}"
    );
    assert_eq!(vol.capacity().unwrap(), cap);
    // A source that fails at once leaves the volume untouched.
    fill_volume(&vol, 0x5a);
    upload_image(&vol, &mut FailingReader { ok: 0 }, &mut |_| {}).unwrap_err();
    assert!(read_volume(&vol).iter().all(|&b| b == 0x5a));
    // And a retry from a good source succeeds.
    let img = mixed_image();
    upload_image(&vol, &mut &img[..], &mut |_| {}).unwrap_or_else(|e| panic!("{e:#}"));
    assert_same(
        &read_volume(&vol),
        &expected_volume(&img, cap as usize),
        "volume after the retry",
    );
}

#[test]
fn upload_at_changes_only_its_range() {
    let tp = TestPool::new("at");
    let cap = 8 * MIB;
    let vol = tp.volume("disk", cap as u64);
    let base = data(6, cap);
    upload_image(&vol, &mut &base[..], &mut |_| {}).unwrap_or_else(|e| panic!("{e:#}"));

    // An unaligned window over several send chunks, with zeros inside it: zeros in a delta
    // must be written, not skipped.
    let (off, len) = (MIB + 513, 3 * MIB + 7);
    let mut patch = data(7, len);
    patch[1000..200_000].fill(0);
    upload_at(&vol, off as u64, len as u64, &mut |rel, buf| {
        buf.copy_from_slice(&patch[rel as usize..rel as usize + buf.len()]);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    let mut want = base.clone();
    want[off..off + len].copy_from_slice(&patch);
    let got = read_volume(&vol);
    assert_same(&got, &want, "volume after upload_at");
    assert_eq!(
        vol.capacity().unwrap(),
        cap as u64,
        "a positioned upload does not truncate"
    );

    // A partial download reads the same window.
    let mut window = vec![0u8; len];
    download_into(&vol, off as u64, &mut window).unwrap();
    assert_same(&window, &patch, "downloaded window");

    // Past the end: refused before anything is sent; the volume is unchanged.
    let err = upload_at(&vol, (cap - 10) as u64, 11, &mut |_, b| {
        b.fill(0xff);
        Ok(())
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("past the end"), "{err:#}");
    // A failing producer aborts the stream and reports where.
    let err = upload_at(&vol, 0, 2 * MIB as u64, &mut |rel, b| {
        if rel >= MIB as u64 {
            Err(std::io::Error::other("source went away"))
        } else {
            b.fill(0xee);
            Ok(())
        }
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("source went away"), "{err:#}");
}

#[test]
fn many_small_uploads_in_a_row_succeed() {
    let tp = TestPool::new("many");
    let vol = tp.volume("disk", 4 * MIB as u64);
    let calls = 64;
    let start = Instant::now();
    for i in 0..calls {
        upload_at(&vol, (i * 64 * 1024) as u64, 4096, &mut |_, b| {
            b.fill(i as u8 + 1);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("call {i}: {e:#}"));
    }
    let per_call = start.elapsed() / calls as u32;
    eprintln!("upload_at of 4 KiB: {per_call:?} per call on a pool of 1 volume");
    let got = read_volume(&vol);
    for i in 0..calls {
        let at = i * 64 * 1024;
        assert!(
            got[at..at + 4096].iter().all(|&b| b == i as u8 + 1),
            "run {i}"
        );
        assert!(
            got[at + 4096..at + 64 * 1024].iter().all(|&b| b == 0),
            "gap after run {i}"
        );
    }
}

#[test]
fn remote_uri_gives_the_same_bytes() {
    let tp = TestPool::on(REMOTE_URI, "remote");
    assert!(!tp.conn.is_local(), "{} counts as remote", tp.conn.uri());
    let cap = 24 * MIB;
    let vol = tp.volume("disk", cap as u64);
    fill_volume(&vol, 0x5a);
    let img = mixed_image();
    upload_image(&vol, &mut &img[..], &mut |_| {}).unwrap_or_else(|e| panic!("{e:#}"));
    let patch = data(8, 300_000);
    upload_at(
        &vol,
        7 * MIB as u64 + 3,
        patch.len() as u64,
        &mut |rel, buf| {
            buf.copy_from_slice(&patch[rel as usize..rel as usize + buf.len()]);
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut want = expected_volume(&img, cap);
    want[7 * MIB + 3..7 * MIB + 3 + patch.len()].copy_from_slice(&patch);
    assert_same(&read_volume(&vol), &want, "volume written over TCP");

    // The same volume seen through the local connection has the same bytes.
    let local = connect(Some(LOCAL_URI)).unwrap();
    assert!(local.is_local());
    let same = local.volume_by_path(vol.path()).unwrap();
    assert_eq!(same.name(), "disk.img");
    assert_eq!(same.pool_name(), tp.name);
    assert!(!same.is_block().unwrap());
    assert_same(&read_volume(&same), &want, "volume read locally");
}

#[test]
fn inactive_pool_is_refused_with_a_clear_error() {
    let conn = connect(Some(LOCAL_URI)).unwrap();
    let name = unique_name("inactive");
    let xml = format!(
        "<pool type='dir'><name>{name}</name><target><path>/var/tmp/{name}</path></target></pool>"
    );
    let pool = conn.raw().define_storage_pool_xml(&xml, 0).unwrap();
    let res = conn.pool(&name);
    let _ = pool.undefine();
    let msg = format!("{:#}", res.unwrap_err());
    assert!(msg.contains("not active") && msg.contains(&name), "{msg}");
    let msg = format!("{:#}", conn.pool(&format!("{name}-missing")).unwrap_err());
    assert!(msg.contains("not found"), "{msg}");
}

fn minimal_domain_xml(name: &str, kind: &str) -> String {
    format!(
        "<domain type='{kind}'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type></os></domain>"
    )
}

#[test]
fn metadata_round_trips_and_virsh_shows_it() {
    let tp = TestPool::new("meta");
    let name = unique_name("meta-dom");
    let dom = tp.define_domain(&minimal_domain_xml(&name, tp.conn.domain_type()));
    let ns = "https://example.org/virt-vmdkimport/1";
    assert_eq!(dom.metadata(ns).unwrap(), None);

    dom.set_metadata(
        ns,
        "vmdkimport",
        "<import base-cid='fffffffe' base-complete='no'/>",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    dom.set_metadata(
        ns,
        "vmdkimport",
        "<import base-cid='fffffffe' base-complete='yes'/>",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let got = dom.metadata(ns).unwrap().expect("metadata present");
    assert!(got.contains("base-complete=\"yes\""), "{got}");
    assert!(
        !got.contains("'no'") && !got.contains("\"no\""),
        "replaced, not added: {got}"
    );

    // Persisted in the definition of the shut-off domain, where virsh finds it too.
    assert!(!dom.is_active().unwrap());
    let found = tp.conn.domain(&name).unwrap().expect("domain by name");
    assert!(found.xml().unwrap().contains("fffffffe"));
    let out = Command::new("virsh")
        .args(["-c", LOCAL_URI, "metadata", &name, ns])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("base-complete=\"yes\""),
        "virsh: {text}"
    );

    assert!(tp
        .conn
        .domain(&format!("{name}-missing"))
        .unwrap()
        .is_none());
}

/// Wait up to `timeout` for a line starting with the marker in the console log.
fn wait_for_marker(log: &std::path::Path, timeout: Duration) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(text) = std::fs::read_to_string(log) {
            if let Some(line) = text.lines().find(|l| l.contains(bootimg::MARKER)) {
                return Some(line.trim().to_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn domain_boots_from_an_uploaded_volume() {
    let tp = TestPool::new("boot");
    let vol = tp.volume("disk", 8 * MIB as u64);
    fill_volume(&vol, 0x5a);
    let payload = data(9, bootimg::PAYLOAD_LEN);
    let img = bootimg::boot_disk(&payload, 2 * MIB + 512);
    upload_image(&vol, &mut &img[..], &mut |_| {}).unwrap_or_else(|e| panic!("{e:#}"));

    let name = unique_name("boot-dom");
    let log = tp.path("console.log");
    let kind = tp.conn.domain_type();
    let xml = format!(
        "<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='{pool}' volume='{vol}'/>
      <target dev='hda' bus='ide'/>
    </disk>
    <serial type='file'><source path='{log}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>",
        pool = tp.name,
        vol = vol.name(),
        log = log.display()
    );
    let dom = tp.define_domain(&xml);
    let disks = dom.disk_sources().unwrap();
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!(
        disks[0].kind,
        DiskKind::Volume {
            pool: tp.name.clone(),
            volume: vol.name().to_owned()
        }
    );
    assert_eq!(
        (disks[0].target_dev.as_str(), disks[0].bus.as_str()),
        ("hda", "ide")
    );

    assert!(!dom.is_active().unwrap());
    let started = Instant::now();
    dom.start().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(dom.is_active().unwrap());
    let line = wait_for_marker(&log, Duration::from_secs(30));
    eprintln!("{kind} domain: console line after {:?}", started.elapsed());
    let line = line.unwrap_or_else(|| {
        panic!(
            "no marker in {} after 30 s: {:?}",
            log.display(),
            std::fs::read_to_string(&log)
        )
    });
    assert_eq!(line, bootimg::expected_line(&payload));

    // Metadata can be updated on the running domain and stays in its persistent config.
    let ns = "https://example.org/virt-vmdkimport/1";
    dom.set_metadata(ns, "vmdkimport", "<import deltas-applied='1'/>")
        .unwrap_or_else(|e| panic!("{e:#}"));
    dom.destroy().unwrap();
    let meta = dom
        .metadata(ns)
        .unwrap()
        .expect("metadata kept after destroy");
    assert!(meta.contains("deltas-applied=\"1\""), "{meta}");
    assert!(!dom.is_active().unwrap());
    let _ = std::io::stderr().flush();
}

/// Not a test: figures for the report. `cargo nextest run --run-ignored only --no-capture
/// -E 'test(speed)'` (use `--release` for meaningful zero detection speed).
#[test]
#[ignore]
fn base_upload_speed_next_to_virsh_vol_upload() {
    let tp = TestPool::new("speed");
    let cap = 256 * MIB;
    let dense = data(10, cap);
    let mut sparse = vec![0u8; cap];
    for i in (0..cap).step_by(10 * MIB) {
        sparse[i..i + MIB].copy_from_slice(&dense[i..i + MIB]);
    }
    for (label, img) in [("dense", &dense), ("90% zeros", &sparse)] {
        let path = tp.path("image.raw");
        std::fs::write(&path, img).unwrap();
        // Each tool writes into a freshly created volume (libvirt preallocates it).
        let vol = tp.volume("speed-ours", cap as u64);
        let t = Instant::now();
        let stats =
            upload_image(&vol, &mut std::fs::File::open(&path).unwrap(), &mut |_| {}).unwrap();
        let ours = t.elapsed();
        let theirs = tp.volume("speed-virsh", cap as u64);
        let t = Instant::now();
        let status = Command::new("virsh")
            .args([
                "-c",
                LOCAL_URI,
                "vol-upload",
                "--pool",
                &tp.name,
                theirs.name(),
            ])
            .arg(&path)
            .status()
            .unwrap();
        let virsh = t.elapsed();
        assert!(status.success());
        eprintln!(
            "{label}: upload_image {ours:?} ({:.0} MB/s, {} data + {} hole bytes), \
             virsh vol-upload {virsh:?} ({:.0} MB/s)",
            cap as f64 / ours.as_secs_f64() / 1e6,
            stats.data_bytes,
            stats.hole_bytes,
            cap as f64 / virsh.as_secs_f64() / 1e6
        );
        let t = Instant::now();
        let back = read_volume(&vol);
        eprintln!("{label}: download of the volume {:?}", t.elapsed());
        assert_same(&back, img, "downloaded image");
        theirs.delete().unwrap();
        vol.delete().unwrap();
    }
}

#[test]
fn concurrent_uploads_to_one_volume_both_land() {
    let tp = TestPool::new("busy");
    let vol = tp.volume("disk", 8 * MIB as u64);
    // Two connections writing disjoint windows at the same moment: libvirt can report the
    // volume busy while the other stream is set up; upload_at waits for it.
    std::thread::scope(|s| {
        for i in 0..2u8 {
            let pool_name = tp.name.clone();
            s.spawn(move || {
                let conn = connect(Some(LOCAL_URI)).unwrap();
                let vol = conn.pool(&pool_name).unwrap().volume("disk.img").unwrap();
                for k in 0..20u64 {
                    let off = u64::from(i) * 4 * MIB as u64 + k * 128 * 1024;
                    upload_at(&vol, off, 64 * 1024, &mut |_, b| {
                        b.fill(i + 1);
                        Ok(())
                    })
                    .unwrap_or_else(|e| panic!("writer {i} call {k}: {e:#}"));
                }
            });
        }
    });
    let got = read_volume(&vol);
    for i in 0..2usize {
        for k in 0..20usize {
            let off = i * 4 * MIB + k * 128 * 1024;
            assert!(
                got[off..off + 64 * 1024].iter().all(|&b| b == i as u8 + 1),
                "{i}/{k}"
            );
        }
    }
}
