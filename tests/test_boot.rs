//! `test-boot`: boot-sector guests under KVM give each verdict (a login prompt, a panic line, a reboot loop, silence), the real domain and its volume stay as they were, and an interrupted test boot leaves nothing after `--cleanup`.

mod util;

use std::path::Path;
use std::time::Instant;

use util::bootimg::{saying, Then};
use util::import::{ok, virsh, Import};
use util::libvirt::TestPool;
use util::testboot::*;
use vmdkimport::state::ImportState;

fn report_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// One boot-sector test boot: its verdict, evidence and report, and nothing changed or left.
fn verdict_of(tag: &str, sector: &[u8], timeout: &str) -> (serde_json::Value, String) {
    let tp = TestPool::new(tag);
    let im = imported(&tp, tag, sector);
    let (before_xml, before_disk) = (xml_without_state(&im), im.read());
    let before_state = ImportState::from_xml(&im.state()).unwrap();
    let report = tp.path("report");
    let t = Instant::now();
    let out = test_boot(
        &im,
        &["--timeout", timeout, "--report", report.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}({:.1} s)", t.elapsed().as_secs_f64());
    assert_eq!(
        xml_without_state(&im),
        before_xml,
        "the real domain is unchanged"
    );
    assert!(im.read() == before_disk, "the volume is unchanged");
    nothing_left(&tp, &im);
    let doc = report_json(&report);
    let mut state = ImportState::from_xml(&im.state()).unwrap();
    let record = state
        .test_boot
        .take()
        .expect("the import state records the test boot");
    assert_eq!(record.verdict, doc["verdict"].as_str().unwrap());
    assert_eq!(record.evidence, doc["evidence"]["text"].as_str().unwrap());
    assert_exit_by_verdict(&out, &doc);
    assert_eq!(
        state, before_state,
        "nothing else of the import state changed"
    );
    (doc, stdout)
}

#[test]
fn a_login_prompt_on_the_console_is_booted() {
    let (doc, out) = verdict_of("tb-login", &saying("\r\ntestvm login: ", Then::Halt), "60s");
    assert_eq!(doc["verdict"], "booted", "{doc:#}");
    assert_eq!(doc["evidence"]["source"], "serial", "{doc:#}");
    assert!(out.contains("booted"), "{out}");
    let shots = doc["screenshots"].as_array().unwrap();
    assert!(!shots.is_empty(), "a screenshot: {doc:#}");
}

#[test]
fn a_panic_line_is_failed_with_the_line() {
    let line = "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)";
    let (doc, _) = verdict_of(
        "tb-panic",
        &saying(&format!("\r\n{line}\r\n"), Then::Halt),
        "60s",
    );
    assert_eq!(doc["verdict"], "failed", "{doc:#}");
    assert_eq!(
        doc["evidence"]["text"],
        format!("kernel panic: {line}"),
        "{doc:#}"
    );
}

#[test]
fn a_guest_that_reboots_itself_is_a_reboot_loop() {
    let (doc, _) = verdict_of("tb-reboot", &saying("rebooting\r\n", Then::Reboot), "60s");
    assert_eq!(doc["verdict"], "failed", "{doc:#}");
    assert_eq!(doc["evidence"]["source"], "events", "{doc:#}");
    // Events that arrive while a screenshot is read count together: three or more.
    let text = doc["evidence"]["text"].as_str().unwrap();
    assert!(text.starts_with("reboot loop: "), "{doc:#}");
    assert!(doc["evidence"]["reboots"].as_u64().unwrap() >= 3, "{doc:#}");
}

#[test]
fn a_silent_guest_is_unknown_after_the_timeout() {
    let (doc, _) = verdict_of("tb-silent", &saying("", Then::Halt), "8s");
    assert_eq!(doc["verdict"], "unknown", "{doc:#}");
    let watched = doc["times"]["watched_ms"].as_u64().unwrap();
    assert!((8_000..20_000).contains(&watched), "{doc:#}");
}

#[test]
fn a_test_boot_killed_with_sigkill_leaves_nothing_after_cleanup() {
    let tp = TestPool::new("tb-kill");
    let im = imported(&tp, "tb-kill", &saying("", Then::Halt));
    let before = xml_without_state(&im);
    let mut child = running_test_boot(&im);
    child.kill().unwrap();
    child.wait().unwrap();
    cleanup_after_a_cut(&tp, &im, &before);
}

#[test]
fn a_test_boot_interrupted_with_sigint_removes_its_copy_itself() {
    let tp = TestPool::new("tb-int");
    let im = imported(&tp, "tb-int", &saying("", Then::Halt));
    let child = running_test_boot(&im);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "an interrupted test boot fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("interrupted by SIGINT: no verdict recorded"),
        "{stderr}"
    );
    nothing_left(&tp, &im);
}

/// tesseract's reading of `png`.
fn ocr(png: &Path) -> String {
    let out = std::process::Command::new("tesseract")
        .arg(png)
        .arg("stdout")
        .output()
        .expect("tesseract (scripts/setup-host.sh installs tesseract-ocr)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn plan_test_boot_writes_one_page_that_a_browser_shows_with_each_verdict() {
    let tp = TestPool::new("tb-plan");
    let good = imported(&tp, "tb-plan-good", &saying("\r\ngood login: ", Then::Halt));
    let bad = imported(
        &tp,
        "tb-plan-bad",
        &saying("\r\nKernel panic - not syncing: test\r\n", Then::Halt),
    );
    let mut plan = String::from("log_dir = \"logs\"\n");
    for (im, tag) in [(&good, "tb-plan-good"), (&bad, "tb-plan-bad")] {
        plan += &format!(
            "[[vm]]\nname = \"{}\"\nflat = \"{}\"\nconnect = \"{}\"\npool = \"{}\"\n",
            im.domain,
            tp.path(&format!("{tag}-flat.vmdk")).display(),
            im.uri,
            tp.name
        );
    }
    let file = tp.path("plan.toml");
    std::fs::write(&file, plan).unwrap();
    let out = good.run(&[
        "plan",
        "test-boot",
        file.to_str().unwrap(),
        "--timeout",
        "60s",
    ]);
    let stdout = ok(&out, "plan test-boot");
    assert!(
        stdout.contains("1 booted, 1 failed, 0 unknown, 0 not run"),
        "{stdout}"
    );
    let page = tp.path("logs/test-boot/index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(
        html.matches("<img src=").count(),
        2,
        "a thumbnail per VM:\n{html}"
    );
    nothing_left(&tp, &good);
    nothing_left(&tp, &bad);

    let shot = tp.path("page.png");
    let browser = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .args([
            "--window-size=1400,700",
            &format!("file://{}", page.display()),
        ])
        .output()
        .expect("chromium (scripts/setup-host.sh installs it)");
    assert!(
        shot.exists(),
        "chromium made no screenshot:\n{}",
        String::from_utf8_lossy(&browser.stderr)
    );
    if let Ok(keep) = std::env::var("VMDKIMPORT_TEST_KEEP_REPORTS") {
        std::fs::copy(&shot, Path::new(&keep).join("plan-page.png")).unwrap();
    }
    let text = ocr(&shot);
    println!("the page as tesseract reads chromium's screenshot:\n{text}");
    for word in ["booted", "failed", "login prompt", "kernel panic"] {
        assert!(text.contains(word), "{word:?} on the page:\n{text}");
    }
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    fn over(file: &Path) -> Loop {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

fn sha256(path: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_block_device_disk_boots_from_a_qcow2_overlay_of_ours_that_is_removed_after() {
    let tp = TestPool::new("tb-block");
    let im = imported(&tp, "tb-block", &saying("\r\nblock login: ", Then::Halt));
    // The disk moved onto a block device (a loop device over a copy of the volume), as on LVM.
    let copy = tp.path("block.raw");
    std::fs::write(&copy, im.read()).unwrap();
    let dev = Loop::over(&copy);
    let xml = im.xml();
    let (a, b) = (
        xml.find("<disk type='volume'").unwrap(),
        xml.find("</disk>").unwrap(),
    );
    let disk = &xml[a..b];
    let src_a = disk.find("<source ").unwrap();
    let src_b = src_a + disk[src_a..].find("/>").unwrap() + 2;
    let new_disk = format!(
        "<disk type='block'{}<source dev='{}'/>{}",
        &disk["<disk type='volume'".len()..src_a],
        dev.0,
        &disk[src_b..]
    );
    let file = tp.path("block.xml");
    std::fs::write(&file, format!("{}{new_disk}{}", &xml[..a], &xml[b..])).unwrap();
    virsh(&im.uri, &["define", file.to_str().unwrap()]);
    let before = sha256(&dev.0);
    let report = tp.path("report");
    let out = test_boot(
        &im,
        &[
            "--timeout",
            "60s",
            "--overlay-pool",
            &tp.name,
            "--report",
            report.to_str().unwrap(),
        ],
    );
    println!("{}", ok(&out, "test-boot"));
    let doc = report_json(&report);
    assert_eq!(doc["verdict"], "booted", "{doc:#}");
    assert!(
        doc["layers"][0].as_str().unwrap().contains("qcow2 overlay"),
        "{doc:#}"
    );
    assert_eq!(sha256(&dev.0), before, "the block device is unchanged");
    let dev_name = doc["layers"][0]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    let overlay = format!("{}-testboot-{dev_name}.qcow2", im.domain);
    assert!(
        tp.pool.find_volume(&overlay).unwrap().is_none(),
        "{overlay} is deleted"
    );
    nothing_left(&tp, &im);
}

#[test]
fn a_uefi_domain_boots_on_a_copy_of_its_variables_and_the_real_file_is_untouched() {
    let tp = TestPool::new("tb-efi");
    let dir = tp.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let mut disk = saying("", Then::Halt);
    disk.resize(1 << 20, 0);
    std::fs::write(dir.join("efi1-flat.vmdk"), &disk).unwrap();
    let extent = format!("RW {} VMFS \"efi1-flat.vmdk\"", disk.len() / 512);
    let desc = util::fixtures::descriptor(0x0e1f_0001, None, "vmfs", &[extent]);
    std::fs::write(dir.join("efi1.vmdk"), desc).unwrap();
    let vmx = dir.join("efi1.vmx");
    std::fs::write(
        &vmx,
        "guestOS = \"debian12-64\"\nfirmware = \"efi\"\nmemsize = \"256\"\nnumvcpus = \"1\"\n\
         scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\n\
         scsi0:0.deviceType = \"scsi-hardDisk\"\nscsi0:0.fileName = \"efi1.vmdk\"\n",
    )
    .unwrap();
    let im = Import::new(&tp, "tb-efi");
    let mut args: Vec<std::ffi::OsString> = im.common();
    args.extend(["--vmx".into(), vmx.into(), "--cpu".into(), "default".into()]);
    ok(&im.run(&args), "stage 1");
    // firmware='efi': libvirt keeps the variables in its nvram folder, named after the domain.
    let real = format!("/var/lib/libvirt/qemu/nvram/{}_VARS.fd", im.domain);
    let before = std::fs::read(&real).expect("the trial start made the variables");
    let report = tp.path("report");
    let out = test_boot(
        &im,
        &["--timeout", "8s", "--report", report.to_str().unwrap()],
    );
    let doc = report_json(&report);
    assert_exit_by_verdict(&out, &doc);
    assert_eq!(
        doc["verdict"], "unknown",
        "nothing to boot under UEFI: {doc:#}"
    );
    let layers = doc["layers"].to_string();
    assert!(layers.contains(&format!("copied from {real}")), "{doc:#}");
    let after = std::fs::read(&real).unwrap();
    assert!(after == before, "the real variables are untouched");
    let copy = Path::new(&real).with_file_name(format!("{}-testboot_VARS.fd", im.domain));
    assert!(!copy.exists(), "{} is removed", copy.display());
    nothing_left(&tp, &im);
}

#[test]
fn without_tesseract_the_screen_is_not_read_and_the_report_says_so() {
    let tp = TestPool::new("tb-noocr");
    let im = imported(&tp, "tb-noocr", &saying("\r\nplain login: ", Then::Halt));
    let report = tp.path("report");
    let empty = tp.path("no-tools");
    std::fs::create_dir_all(&empty).unwrap();
    let mut args = vec!["test-boot", "-c", &im.uri, "--domain", &im.domain];
    args.extend(["--timeout", "60s", "--report", report.to_str().unwrap()]);
    let out = util::import::run_env(&args, &[("PATH", empty.to_str().unwrap())]);
    let stdout = ok(&out, "test-boot without tesseract");
    let doc = report_json(&report);
    assert_eq!(
        doc["verdict"], "booted",
        "the console still decides: {doc:#}"
    );
    assert!(
        doc["ocr"].as_str().unwrap().starts_with("absent"),
        "{doc:#}"
    );
    assert!(
        doc["evidence"]["notes"]
            .to_string()
            .contains("tesseract is not installed"),
        "{doc:#}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("note: tesseract is not installed"),
        "{stdout}{stderr}"
    );
    assert!(
        doc["screenshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["text"].is_null()),
        "{doc:#}"
    );
}
