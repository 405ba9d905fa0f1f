//! Test boots for the tests: a boot-sector guest imported by stage 1, `test-boot` run on it (to its end or left running), and the checks that it left nothing.

use std::process::Output;
use std::time::Instant;

use super::import::{ok, virsh, Import};
use super::libvirt::TestPool;

pub const SMALL_VM: &[&str] = &["--memory", "128", "--vcpus", "1", "--cpu", "default"];

/// A domain imported by stage 1 from a 1 MiB disk whose boot sector is `sector`.
pub fn imported<'a>(tp: &'a TestPool, tag: &str, sector: &[u8]) -> Import<'a> {
    let flat = tp.path(&format!("{tag}-flat.vmdk"));
    let mut disk = sector.to_vec();
    disk.resize(1 << 20, 0);
    std::fs::write(&flat, &disk).unwrap();
    let im = Import::new(tp, tag);
    ok(&im.stage1(&flat, SMALL_VM), "stage 1");
    im
}

/// `test-boot` of the import's domain with `extra` options.
pub fn test_boot(im: &Import, extra: &[&str]) -> Output {
    let mut args = vec!["test-boot", "-c", &im.uri, "--domain", &im.domain];
    args.extend_from_slice(extra);
    im.run(&args)
}

/// The domain XML without the import state's element (the test boot adds its record there).
pub fn xml_without_state(im: &Import) -> String {
    let xml = im.xml();
    match (xml.find("<metadata>"), xml.find("</metadata>")) {
        (Some(a), Some(b)) => format!("{}{}", &xml[..a], &xml[b..]),
        _ => xml,
    }
}

/// Nothing of the throwaway domain is left: no domain, no transient overlay, no record.
pub fn nothing_left(tp: &TestPool, im: &Import) {
    let name = format!("{}-testboot", im.domain);
    assert!(tp.conn.domain(&name).unwrap().is_none(), "{name} is gone");
    let left: Vec<String> = std::fs::read_dir(tp.pool_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("TRANSIENT"))
        .collect();
    assert!(left.is_empty(), "overlays left: {left:?}");
    assert!(!im.xml().contains("ns/testboot/1"), "the record is removed");
}

/// Start a test boot of a silent guest in the background and wait for its throwaway domain.
pub fn running_test_boot(im: &Import) -> std::process::Child {
    let child = std::process::Command::new(super::BIN)
        .args([
            "test-boot",
            "-c",
            &im.uri,
            "--domain",
            &im.domain,
            "--timeout",
            "2m",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let name = format!("{}-testboot", im.domain);
    let t = Instant::now();
    // Running (resumed), not just created: a kill during the start makes libvirt end it.
    while !virsh(&im.uri, &["list", "--state-running", "--name"]).contains(&name) {
        assert!(t.elapsed().as_secs() < 60, "no running {name} after 60 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    child
}

/// A test boot cut short left its copy running and recorded: `--cleanup` destroys it, and then
/// nothing is left, the real domain's XML is `before` again and no verdict was recorded.
pub fn cleanup_after_a_cut(tp: &TestPool, im: &Import, before: &str) {
    let name = format!("{}-testboot", im.domain);
    assert!(
        tp.conn.domain(&name).unwrap().is_some(),
        "the cut left the copy running"
    );
    assert!(im.xml().contains("ns/testboot/1"), "and its record");
    let stdout = ok(&test_boot(im, &["--cleanup"]), "test-boot --cleanup");
    assert!(
        stdout.contains(&format!("domain '{name}' destroyed")),
        "{stdout}"
    );
    nothing_left(tp, im);
    assert_eq!(
        xml_without_state(im),
        before,
        "the real domain is as it was"
    );
    assert!(!im.state().contains("test-boot"), "no verdict recorded");
}

/// The exit code says the report's verdict: 0 booted, 2 failed, 3 unknown (1 is left to
/// errors).
pub fn assert_exit_by_verdict(out: &Output, doc: &serde_json::Value) {
    let want = match doc["verdict"].as_str() {
        Some("booted") => 0,
        Some("failed") => 2,
        _ => 3,
    };
    assert_eq!(
        out.status.code(),
        Some(want),
        "exit code for {}: {}",
        doc["verdict"],
        String::from_utf8_lossy(&out.stderr)
    );
}
