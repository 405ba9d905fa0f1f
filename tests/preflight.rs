//! The preflight end to end: `plan check` of VMs on the stand-in ESXi host reads only (nothing on ESXi but queries, nothing made in libvirt) and says each finding (network, Tools, snapshot room, an RDM, the power) in its table and its JSON; stage 1's `--dry-run` of a troubled local .vmx starts with the table, fails on its errors and makes nothing, and warns of a name another tool's domain holds.

mod util;

use serde_json::Value;
use util::esx::{running_vm, StandIn};
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{domain_exists, TestNet};

/// The `vim-cmd` subcommands that only read.
const QUERIES: [&str; 4] = [
    "vmsvc/getallvms",
    "vmsvc/power.getstate",
    "vmsvc/snapshot.get",
    "vmsvc/get.guest",
];

/// What the tool sent to ESXi since `before` (the commands then), each a query.
fn only_queries(esx: &StandIn, before: &str) -> String {
    let sent = esx.commands()[before.len()..].to_string();
    for line in sent.lines() {
        let sub = line.split(' ').next().unwrap();
        assert!(
            QUERIES.contains(&sub),
            "only queries on ESXi, not {line:?}:\n{sent}"
        );
    }
    sent
}

/// The finding of `doc` (one VM's preflight) whose text has `what`.
fn finding<'a>(doc: &'a Value, what: &str) -> &'a Value {
    let all = doc["findings"].as_array().expect("findings");
    all.iter()
        .find(|f| f["what"].as_str().unwrap().contains(what))
        .unwrap_or_else(|| panic!("a finding with {what:?} in {doc:#}"))
}

/// A plan of one VM, `name`, from the stand-in's `vmx`, into `tp`, its NIC on `net`.
fn plan(esx: &StandIn, tp: &TestPool, name: &str, vmx: &str, net: &str) -> String {
    let text = format!(
        "[[vm]]\nname = \"{name}\"\nvmx = \"{}\"\nconnect = \"qemu:///system\"\npool = \"{}\"\nnetwork = [\"VM Network={net}\"]\ncpu = \"default\"\n",
        esx.url(vmx),
        tp.name
    );
    let path = tp.dir.join("plan.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `plan check PLAN --json`: its exit code and its document.
fn check(esx: &StandIn, plan: &str) -> (Option<i32>, Value, String) {
    let run = esx.tool(&["plan", "check", plan, "--json"]);
    let doc: Value = serde_json::from_str(&run.stdout()).unwrap_or_else(|e| panic!("{e}: {run}"));
    (run.code(), doc, run.stderr())
}

#[test]
fn an_esxi_plan_check_reads_only_and_says_each_finding_with_its_way_out() {
    let esx = StandIn::start();
    let tp = TestPool::new("pf-esx");
    let vmx = running_vm(&esx, "pfweb", 31, "sesparse", 2, true);
    let name = unique_name("pf-esx");
    tp.track_domain(&name);
    let missing = unique_name("pf-nonet");
    let plan_missing = plan(&esx, &tp, &name, &vmx, &missing);
    let before = esx.commands();

    let (code, doc, table) = check(&esx, &plan_missing);
    println!("{table}");
    assert_eq!(code, Some(1), "an error finding fails the check: {table}");
    let vm = &doc["vms"][0];
    assert_eq!(vm["result"], "failed", "{doc:#}");
    let error = vm["error"].as_str().unwrap();
    assert!(
        error.starts_with("preflight: ") && error.contains(&missing),
        "{error}"
    );
    let pre = &vm["preflight"];
    assert_eq!(pre["errors"], 1, "{pre:#}");
    for f in pre["findings"].as_array().unwrap() {
        let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["severity", "side", "what", "way_out"], "{f}");
    }
    let net = finding(
        pre,
        &format!("libvirt network '{missing}': it does not exist"),
    );
    assert_eq!(
        (&net["severity"], &net["side"]),
        (&"error".into(), &"kvm".into())
    );
    assert!(
        net["way_out"].as_str().unwrap().contains("net-start"),
        "{net}"
    );
    assert_eq!(finding(pre, "VMware Tools run")["severity"], "info");
    assert_eq!(finding(pre, "snapshot chain is 0 deep")["severity"], "info");
    assert_eq!(
        finding(pre, "does not exist on qemu:///system: stage 1 defines it")["side"],
        "kvm"
    );
    assert_eq!(
        finding(pre, "free for disks of 16.0 MiB")["severity"],
        "info"
    );
    assert!(
        table.contains("SEVERITY  SIDE") && table.contains("ERROR     kvm"),
        "{table}"
    );

    // Nothing but queries reached ESXi, nothing was made in libvirt.
    let sent = only_queries(&esx, &before);
    assert!(sent.contains("vmsvc/get.guest 31"), "{sent}");
    assert!(!domain_exists(&name), "no domain defined");
    assert!(
        tp.pool.raw().list_volumes().unwrap().is_empty(),
        "no volume made"
    );

    // The guest's Tools stop, the network exists: a warning, no error, and the dry run runs.
    esx.no_tools(31);
    let net = TestNet::isolated("pf-net");
    let plan_ok = plan(&esx, &tp, &name, &vmx, &net.name);
    let (code, doc, table) = check(&esx, &plan_ok);
    let pre = &doc["vms"][0]["preflight"];
    assert_eq!(pre["errors"], 0, "{pre:#}");
    let tools = finding(
        pre,
        "VMware Tools do not run in the guest (toolsRunningStatus guestToolsNotRunning)",
    );
    assert_eq!(tools["severity"], "warning");
    assert!(tools["way_out"].as_str().unwrap().contains("--hard-off"));
    assert_eq!(code, Some(0), "{table}");
    assert_eq!(doc["vms"][0]["result"], "done", "{doc:#}");
    assert!(!domain_exists(&name), "no domain defined");

    // A chain as deep as this tool lets it get: an error naming the way out, no snapshot.
    for n in 1..=29 {
        esx.add_snapshot_record(31, n, &format!("backup-{n}"));
    }
    let (code, doc, table) = check(&esx, &plan_ok);
    assert_eq!(code, Some(1), "{table}");
    let deep = finding(
        &doc["vms"][0]["preflight"],
        "its snapshot chain is 29 deep; this tool takes none over 29",
    );
    assert_eq!(deep["severity"], "error");
    assert!(deep["way_out"]
        .as_str()
        .unwrap()
        .contains("remove or consolidate"));
    only_queries(&esx, &before);
}

#[test]
fn a_dry_run_of_stage_one_starts_with_the_preflight_fails_on_its_errors_and_makes_nothing() {
    let tp = TestPool::new("pf-dry");
    let name = unique_name("pf-dry");
    tp.track_domain(&name);
    let vmx = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/preflight/troubled.vmx"
    );
    let out = dry_run_json(&name, &tp.name, vmx);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let pre = &doc["preflight"];
    assert_eq!(pre["domain"], name.as_str());
    for what in [
        "disk scsi0:1 (",
        "is multi-writer",
        "is a raw device mapping (RDM)",
        "controller scsi1 shares its bus",
        "the VM is encrypted",
    ] {
        assert_eq!(finding(pre, what)["severity"], "error", "{what}");
    }
    assert_eq!(finding(pre, "has a vTPM")["severity"], "warning");
    assert_eq!(
        finding(pre, "serial0 is not migrated")["severity"],
        "warning"
    );
    assert_eq!(
        finding(pre, "is neither Windows nor a known Linux")["severity"],
        "warning"
    );
    assert_eq!(finding(pre, "CD-ROM sata0:0")["severity"], "info");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("block the migration"),
        "{doc:#}"
    );
    assert!(
        stderr.contains("preflight of '") && stderr.contains("WAY OUT"),
        "{stderr}"
    );
    assert!(!domain_exists(&name), "no domain defined");
    assert!(
        tp.pool.raw().list_volumes().unwrap().is_empty(),
        "no volume made"
    );

    // The name taken by another tool's domain: a warning, and that domain left as it was.
    let xml = format!(
        "<domain type='{}'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>",
        tp.conn.domain_type()
    );
    tp.define_domain(&xml);
    let before = util::vmximport::dumpxml(&name);
    let out = dry_run_json(&name, &tp.name, vmx);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let taken = finding(
        &doc["preflight"],
        "is taken on qemu:///system by a domain without import state",
    );
    assert_eq!(taken["severity"], "warning");
    assert_eq!(
        util::vmximport::dumpxml(&name),
        before,
        "the domain unchanged"
    );
}

#[test]
fn an_rdm_on_esxi_is_named_an_rdm_and_a_powered_off_vm_needs_no_shutdown() {
    let esx = StandIn::start();
    let tp = TestPool::new("pf-rdm");
    let dir = esx.vm_dir("db");
    util::vmximport::flat_base(
        &dir,
        "db",
        &util::fixtures::patterned(0x77, 1 << 20),
        0x1111,
    );
    // A physical RDM's mapping file, as vmkfstools -z writes it.
    std::fs::write(
        dir.join("db_1.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=00002222\nparentCID=ffffffff\n\
         createType=\"vmfsPassthroughRawDeviceMap\"\nRW 2048 VMFSRDM \"db_1-rdmp.vmdk\"\n",
    )
    .unwrap();
    let vmx = util::esx::vmx_text("db", &["db.vmdk", "db_1.vmdk"]);
    std::fs::write(dir.join("db.vmx"), vmx).unwrap();
    esx.register(5, "db", "db/db.vmx", false, "sesparse", "");
    let name = unique_name("pf-rdm");
    tp.track_domain(&name);
    let text = format!(
        "[[vm]]\nname = \"{name}\"\nvmx = \"{}\"\nconnect = \"qemu:///system\"\npool = \"{}\"\ncpu = \"default\"\n",
        esx.url("db/db.vmx"),
        tp.name
    );
    let path = tp.dir.join("plan.toml");
    std::fs::write(&path, text).unwrap();

    let (code, doc, table) = check(&esx, &path.display().to_string());
    assert_eq!(code, Some(1), "{table}");
    let pre = &doc["vms"][0]["preflight"];
    let rdm = finding(pre, "disk scsi0:1 is a raw device mapping (RDM)");
    assert_eq!(rdm["severity"], "error");
    assert!(
        rdm["way_out"].as_str().unwrap().contains("present the LUN"),
        "{rdm}"
    );
    assert_eq!(pre["errors"], 1, "only the RDM: {pre:#}");
    assert_eq!(finding(pre, "the VM is powered off")["severity"], "info");
    // The one readable disk's capacity is counted; no get.guest for a VM that is off.
    assert_eq!(
        finding(pre, "free for disks of 1.0 MiB")["severity"],
        "info"
    );
    let sent = only_queries(&esx, "");
    assert!(!sent.contains("get.guest"), "{sent}");
    assert!(!domain_exists(&name), "no domain defined");
}

/// Stage 1 of `vmx` into domain `name` and pool `pool`, with `--dry-run --json`.
fn dry_run_json(name: &str, pool: &str, vmx: &str) -> std::process::Output {
    std::process::Command::new(util::BIN)
        .args(["-c", "qemu:///system", "--domain", name, "--pool", pool])
        .args(["--vmx", vmx, "--dry-run", "--json"])
        .output()
        .unwrap()
}
