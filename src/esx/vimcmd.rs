//! Strict readers of `vim-cmd` answers: an answer that does not parse is an error naming the command and its output, never a guess.

use anyhow::{bail, Result};

use super::ssh::show_output;

/// A VM row of `vim-cmd vmsvc/getallvms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub id: u32,
    /// The row after its Vmid: name, file, guest OS, version, annotation. Names, datastores
    /// and annotations may hold blanks and brackets, so the columns are not cut apart; a row
    /// is asked whether it holds a path ([`VmRow::datastores_of`]).
    pub rest: String,
}

impl VmRow {
    /// The datastores `ds` for which this row holds `[ds] path` as a column (after a blank,
    /// and followed by a blank or the row's end): usually one.
    pub fn datastores_of(&self, path: &str) -> Vec<String> {
        let rest = self.rest.as_str();
        let needle = format!("] {path}");
        let mut found = Vec::new();
        for (at, _) in rest.match_indices(&needle) {
            let end = at + needle.len();
            if !(rest[end..].is_empty() || rest[end..].starts_with([' ', '\t'])) {
                continue;
            }
            let Some(open) = rest[..at].rfind('[') else {
                continue;
            };
            let ds = &rest[open + 1..at];
            let column = rest[..open].is_empty() || rest[..open].ends_with([' ', '\t']);
            if column && !ds.contains(']') {
                found.push(ds.to_string());
            }
        }
        found
    }

    /// `[datastore] dir/file.vmx` as far as the row tells it (the first `[` that opens a
    /// `] ` and the first `.vmx` ending a column after it), for messages.
    pub fn file(&self) -> Option<&str> {
        let rest = self.rest.as_str();
        let open = rest.find('[')?;
        let close = open + rest[open..].find("] ")?;
        let after = close + 2;
        let end = rest[after..]
            .match_indices(".vmx")
            .map(|(i, _)| after + i + 4)
            .find(|&e| rest[e..].is_empty() || rest[e..].starts_with([' ', '\t']))?;
        Some(&rest[open..end])
    }
}

/// Power state from `vim-cmd vmsvc/power.getstate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    On,
    Off,
    Suspended,
}

/// One snapshot of `vim-cmd vmsvc/snapshot.get`, in tree order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub id: Option<u32>,
    /// 0 for the root, one more per level.
    pub depth: usize,
    /// Its description, every line of it.
    pub description: String,
}

fn refuse(cmd: &str, out: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`{cmd}` answered something this tool does not understand ({why}): {}",
        show_output(out)
    )
}

/// The rows of `getallvms`: lines that start with a Vmid and a blank, after the header.
/// Before the header only `Skipping invalid VM 'N'` lines may come (ESXi 6.5 prints them
/// there); other lines (annotation continuations) are skipped; a missing header is refused.
pub fn parse_getallvms(cmd: &str, out: &str) -> Result<Vec<VmRow>> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    loop {
        let line = lines.next().unwrap_or("");
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"Vmid") && words.contains(&"File") {
            break;
        }
        if !line.trim_start().starts_with("Skipping invalid VM ") {
            return Err(refuse(cmd, out, "no `Vmid ... File ...` header"));
        }
    }
    Ok(lines.filter_map(vm_row).collect())
}

fn vm_row(line: &str) -> Option<VmRow> {
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = &line[digits..];
    if digits == 0 || !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some(VmRow {
        id: line[..digits].parse().ok()?,
        rest: rest.trim_end().to_string(),
    })
}

/// `Retrieved runtime info` then `Powered on`, `Powered off` or `Suspended`, nothing else.
/// `toolsRunningStatus` from `get.guest`'s object: its value (`guestToolsRunning`,
/// `guestToolsNotRunning`, ...). Fields are 3-space indented and end in `, ` (ESX-REAL.md
/// section 5 [IDX 3708321265]); an answer without the field is refused.
pub fn parse_tools_status(cmd: &str, out: &str) -> Result<String> {
    out.lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("toolsRunningStatus = ")?;
            Some(v.trim_end_matches([',', ' ']).trim_matches('"').to_string())
        })
        .filter(|v| !v.is_empty())
        .ok_or_else(|| refuse(cmd, out, "no toolsRunningStatus field"))
}

pub fn parse_power(cmd: &str, out: &str) -> Result<Power> {
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        ["Retrieved runtime info", state] => match *state {
            "Powered on" => Ok(Power::On),
            "Powered off" => Ok(Power::Off),
            "Suspended" => Ok(Power::Suspended),
            _ => Err(refuse(cmd, out, "an unknown power state")),
        },
        _ => Err(refuse(cmd, out, "not `Retrieved runtime info` and a state")),
    }
}

/// A `Snapshot KEY : value` line of the tree: its dashes, key and value.
fn snapshot_line(line: &str) -> Option<(usize, &str, &str)> {
    let dashes = line.len() - line.trim_start_matches('-').len();
    let (key, value) = line[dashes..].strip_prefix("Snapshot ")?.split_once(':')?;
    Some((
        dashes,
        key.trim_end(),
        value.strip_prefix(' ').unwrap_or(value),
    ))
}

/// What the next line of the tree must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// `|-ROOT` (first) or `<dashes>|-CHILD`, or the end.
    Marker,
    /// The `Name` line of the snapshot the marker opened, at these dashes.
    Name(usize),
    /// `Id` (absent before ESXi 5) or `Desciption`.
    IdOrDescription,
    Description,
    /// The description's later lines, printed raw, up to its `Created On` and `State`.
    MoreDescription,
    /// `Created On`, then `State`.
    State,
    AfterCreated,
}

/// Whether `line` is the marker that opens a snapshot after one whose lines have `dashes`
/// dashes: `<d>|-CHILD`, d even and at most `dashes` (a child, or a sibling higher up).
fn child_marker(line: &str, dashes: usize) -> bool {
    let d = line.len() - line.trim_start_matches('-').len();
    &line[d..] == "|-CHILD" && d.is_multiple_of(2) && d <= dashes
}

/// Whether the description of a snapshot whose lines have `dashes` dashes ends before
/// `lines[0]`: that line is its `Created On`, the next its `State`, and after those the tree
/// ends or the next snapshot's marker comes. A description's line that only looks like one of
/// those stays text.
fn description_ends(lines: &[&str], dashes: usize) -> bool {
    let at = |i: usize, key: &str| {
        lines
            .get(i)
            .and_then(|l| snapshot_line(l))
            .is_some_and(|(d, k, _)| d == dashes && k == key)
    };
    let after = lines[2.min(lines.len())..]
        .iter()
        .find(|l| !l.trim().is_empty());
    at(0, "Created On") && at(1, "State") && after.is_none_or(|l| child_marker(l, dashes))
}

/// The snapshot tree: `Get Snapshot:`, then per snapshot a `|-ROOT` or `<dashes>|-CHILD`
/// marker and its `Snapshot Name`, `Id`, `Desciption` (sic), `Created On` and `State` lines,
/// each level two more dashes (ESX-REAL.md section 1). A description's later lines are printed
/// raw, so everything from `Desciption` up to the snapshot's own `Created On` and `State`
/// lines, followed by the end or the next marker, is its text, whatever it holds.
pub fn parse_snapshots(cmd: &str, out: &str) -> Result<Vec<Snapshot>> {
    let all: Vec<&str> = out.lines().collect();
    let Some(first) = all.iter().position(|l| !l.trim().is_empty()) else {
        return Err(refuse(cmd, out, "no `Get Snapshot:` line first"));
    };
    if all[first].trim() != "Get Snapshot:" {
        return Err(refuse(cmd, out, "no `Get Snapshot:` line first"));
    }
    let bad = |why: String| refuse(cmd, out, &why);
    let mut snaps: Vec<Snapshot> = Vec::new();
    let mut next = Next::Marker;
    let mut dashes = 0;
    for (i, line) in all.iter().enumerate().skip(first + 1) {
        if next == Next::MoreDescription {
            if !description_ends(&all[i..], dashes) {
                let s = snaps.last_mut().expect("a description has its snapshot");
                s.description.push('\n');
                s.description.push_str(line);
                continue;
            }
            next = Next::State;
        }
        if line.trim().is_empty() {
            continue;
        }
        if next == Next::Marker {
            let d = line.len() - line.trim_start_matches('-').len();
            let ok = match &line[d..] {
                "|-ROOT" => snaps.is_empty() && d == 0,
                _ => !snaps.is_empty() && child_marker(line, dashes),
            };
            if !ok {
                return Err(bad(format!(
                    "the line {line:?} where a snapshot should start"
                )));
            }
            next = Next::Name(d + 2);
            continue;
        }
        let Some((d, key, value)) = snapshot_line(line) else {
            return Err(bad(format!("the line {line:?}")));
        };
        match (next, key) {
            (Next::Name(want), "Name") if d == want => {
                dashes = d;
                snaps.push(Snapshot {
                    name: value.to_string(),
                    id: None,
                    depth: d / 2 - 1,
                    description: String::new(),
                });
                next = Next::IdOrDescription;
            }
            (Next::IdOrDescription, "Id") if d == dashes => {
                let id = value
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("the snapshot id {value:?}")))?;
                snaps.last_mut().expect("after its Name").id = Some(id);
                next = Next::Description;
            }
            (Next::IdOrDescription | Next::Description, "Desciption" | "Description")
                if d == dashes =>
            {
                snaps.last_mut().expect("after its Name").description = value.to_string();
                next = Next::MoreDescription;
            }
            (Next::State, "Created On") if d == dashes => next = Next::AfterCreated,
            (Next::AfterCreated, "State") if d == dashes => next = Next::Marker,
            _ => return Err(bad(format!("the line {line:?} out of place"))),
        }
    }
    match next {
        Next::Marker => Ok(snaps),
        _ => Err(bad("a snapshot cut short".into())),
    }
}

/// What a `snapshot.create` answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// `Create Snapshot:` and nothing else.
    Taken,
    /// "Snapshot not taken since the state of the virtual machine has not changed since the
    /// last snapshot operation." (ESX-REAL.md section 3): the snapshot there is the newest.
    Unchanged,
}

/// What ESXi says when it takes no snapshot because the VM has not changed since its last
/// snapshot operation, in vim-cmd's text and in the task error's ([VCL]; ESX-REAL.md section 3).
pub const UNCHANGED_TEXT: &str = "has not changed since the last snapshot operation";

/// The text ESXi gives when a VM has as many snapshots as it may have (ESX-REAL.md section 3).
pub const LIMIT_TEXT: &str = "Exceeded the maximum number of permitted snapshots";

/// A `snapshot.create` answer (with any exit status): taken only if it printed `Create
/// Snapshot:` and nothing else; not taken, and said so, when the VM has not changed since
/// its last snapshot (whatever else is printed around it).
pub fn check_created(cmd: &str, out: &str) -> Result<Created> {
    if out.contains(UNCHANGED_TEXT) {
        return Ok(Created::Unchanged);
    }
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines != ["Create Snapshot:"] {
        bail!("{}", refuse(cmd, out, "not `Create Snapshot:`"));
    }
    Ok(Created::Taken)
}

/// Whether a `snapshot.remove` answer starts as a removal does (`Remove Snapshot:`; ESXi 5.5
/// prints the tree left after it). Only `snapshot.get` says whether the snapshot went.
pub fn removal_started(out: &str) -> bool {
    out.lines().map(str::trim).find(|l| !l.is_empty()) == Some("Remove Snapshot:")
}

/// The line of an answer that is one of hostd's passing failures, which the tools that drive
/// ESXi retry ([VCL], [TF]; ESX-REAL.md section 4): a login to hostd that failed, a
/// connection to it refused, an object it has not finished making, vim-cmd itself crashing,
/// another task in progress, or the lone `<unset>` of a restarting management agent. Any line
/// of an answer that `failed` (a non-zero exit) counts; of an answer that exited 0 only its
/// first line, so that a description or an annotation further down may hold any text.
pub fn transient(out: &str, failed: bool) -> Option<&str> {
    const MARKS: &[&str] = &[
        "Failed to login",
        "Connect to localhost failed",
        "SSL Exception",
        "has already been deleted or has not been completely created",
        "terminate called after throwing",
        "std::bad_alloc",
        "another task is in progress",
    ];
    if out.trim() == "<unset>" {
        return Some("<unset>");
    }
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next()?;
    std::iter::once(first)
        .chain(lines.filter(|_| failed))
        .find(|l| MARKS.iter().any(|m| l.contains(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_guest_gives_the_tools_running_status_and_an_answer_without_it_is_refused() {
        // ESX-REAL.md section 5 [IDX 3708321265], fields cut.
        let out = "Guest information:\n\n(vim.vm.GuestInfo) {\n   toolsStatus = \"toolsOk\", \n   toolsRunningStatus = \"guestToolsRunning\", \n   toolsVersion = \"11333\", \n";
        let cmd = "vim-cmd vmsvc/get.guest 7";
        assert_eq!(parse_tools_status(cmd, out).unwrap(), "guestToolsRunning");
        let off = out.replace("guestToolsRunning", "guestToolsNotRunning");
        assert_eq!(
            parse_tools_status(cmd, &off).unwrap(),
            "guestToolsNotRunning"
        );
        let e = parse_tools_status(cmd, "Guest information:\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("no toolsRunningStatus field"),
            "{e:#}"
        );
    }

    #[test]
    fn getallvms_rows_are_anchored_on_the_vmid_and_asked_for_their_vmx_path() {
        let out = "Vmid     Name                    File                     Guest OS       Version         Annotation\n\
            2      xx         [datastore1] xx/xx.vmx               rhel8_64Guest     vmx-14\n\
            3      make make   [datastore1] make make/m m.vmx   centos8_64Guest   vmx-14    Rocky linux 8\n\
            autostart\n\
            12 notes without a path\n";
        let rows = parse_getallvms("getallvms", out).unwrap();
        let ids: Vec<u32> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, [2, 3, 12]);
        assert_eq!(rows[1].datastores_of("make make/m m.vmx"), ["datastore1"]);
        assert_eq!(rows[1].file(), Some("[datastore1] make make/m m.vmx"));
        assert!(rows[0].datastores_of("make make/m m.vmx").is_empty());
        assert!(
            rows[1].datastores_of("make/m m.vmx").is_empty(),
            "a whole column"
        );
        assert_eq!(rows[2].file(), None);
        let e = parse_getallvms("vim-cmd vmsvc/getallvms", "1 x [d] a.vmx\n").unwrap_err();
        assert!(e.to_string().contains("vim-cmd vmsvc/getallvms"), "{e}");
    }

    #[test]
    fn getallvms_skips_invalid_vms_before_its_header_and_reads_names_with_brackets() {
        // ESXi 6.5's "Skipping invalid VM" line, a vCLS row of 9.0 with an empty datastore, a
        // datastore and a VM named with blanks and brackets (ESX-REAL.md section 6).
        let out = "Skipping invalid VM '6'\n\
            Vmid          Name                               File                             Guest OS       Version   Annotation\n\
            1698   vCLS-6b72   [] /var/run/crx/infra/vCLS-6b72/vCLS-6b72.vmx   crxSys1Guest   vmx-21              \n\
            3      [datastore2 (1)] web   [datastore2 (1)] other/other.vmx   ubuntu64Guest   vmx-14    \n\
            48     web [1] x   [datastore2 (1)] web [1] x/web [1] x.vmx   ubuntu64Guest   vmx-14    [prod] web.vmx\n";
        let rows = parse_getallvms("getallvms", out).unwrap();
        let path = "web [1] x/web [1] x.vmx";
        let holding: Vec<(u32, Vec<String>)> = rows
            .iter()
            .map(|r| (r.id, r.datastores_of(path)))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        assert_eq!(holding, [(48, vec!["datastore2 (1)".to_string()])]);
        assert_eq!(
            rows[0].datastores_of("/var/run/crx/infra/vCLS-6b72/vCLS-6b72.vmx"),
            [""]
        );
        assert!(parse_getallvms("getallvms", "Skipping invalid VM '6'\n").is_err());
        assert!(parse_getallvms("getallvms", "Something else\nVmid Name File\n").is_err());
    }

    #[test]
    fn power_states_are_the_three_documented_ones() {
        let p = |s| parse_power("getstate", s);
        assert_eq!(
            p("Retrieved runtime info\nPowered on\n").unwrap(),
            Power::On
        );
        assert_eq!(
            p("Retrieved runtime info\nSuspended\n").unwrap(),
            Power::Suspended
        );
        assert!(p("Retrieved runtime info\nPowered sideways\n").is_err());
        assert!(p("Powered on\n").is_err());
    }

    #[test]
    fn snapshot_trees_give_names_ids_and_depths() {
        let out = "Get Snapshot:\n|-ROOT\n--Snapshot Name        : snap01\n--Snapshot Id        : 1\n\
            --Snapshot Desciption  : snap01 description\n--Snapshot Created On  : 2/23/2015 18:12:50\n\
            --Snapshot State       : powered on\n--|-CHILD\n----Snapshot Name        : snap02\n\
            ----Snapshot Id          : 2\n----Snapshot Desciption  :\n\
            ----Snapshot Created On  : 11/30/2017 0:0:4\n----Snapshot State       : powered off\n";
        let s = parse_snapshots("get", out).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].name.as_str(), s[0].id, s[0].depth),
            ("snap01", Some(1), 0)
        );
        assert_eq!(
            (
                s[1].name.as_str(),
                s[1].id,
                s[1].depth,
                s[1].description.as_str()
            ),
            ("snap02", Some(2), 1, "")
        );
        assert!(parse_snapshots("get", "Get Snapshot:\n")
            .unwrap()
            .is_empty());
        assert!(parse_snapshots("get", "Get Snapshot:\n--Snapshot Id : x\n").is_err());
        assert!(parse_snapshots("get", "Snapshots:\n").is_err());
        assert!(parse_snapshots("get", "Get Snapshot:\nwhatever\n").is_err());
        // Cut short, or a child two levels down.
        assert!(parse_snapshots("get", &out[..out.len() - 34]).is_err());
        let skip = out.replace("--|-CHILD\n----", "--|-CHILD\n------");
        assert!(parse_snapshots("get", &skip).is_err());
    }

    #[test]
    fn a_description_is_text_up_to_its_snapshots_created_on_line_whatever_it_holds() {
        // ESXi 5.5 U1 prints a description's later lines raw ([FA], ESX-REAL.md section 1);
        // these look like the tree around them.
        let out = "Get Snapshot:\n|-ROOT\n--Snapshot Name        : prepared for install\n\
            --Snapshot Id        : 3\n--Snapshot Desciption  : clush configured\n\
            tmp and all traces of mapr removed\n|-CHILD\n--Snapshot Name        : virt-vmdkimport-1\n\
            \n----Snapshot Created On  : 1/2/2026 3:4:5\n\
            --Snapshot Created On  : 8/21/2014 22:0:23\n--Snapshot State       : powered off\n\
            --|-CHILD\n----Snapshot Name        : virt-vmdkimport-2\n----Snapshot Id        : 4\n\
            ----Snapshot Desciption  : ours\n----Snapshot Created On  : 8/21/2014 22:1:0\n\
            ----Snapshot State       : powered on\n";
        let s = parse_snapshots("get", out).unwrap();
        let names: Vec<(&str, Option<u32>, usize)> =
            s.iter().map(|s| (s.name.as_str(), s.id, s.depth)).collect();
        assert_eq!(
            names,
            [
                ("prepared for install", Some(3), 0),
                ("virt-vmdkimport-2", Some(4), 1)
            ]
        );
        assert_eq!(
            s[0].description,
            "clush configured\ntmp and all traces of mapr removed\n|-CHILD\n\
             --Snapshot Name        : virt-vmdkimport-1\n\n----Snapshot Created On  : 1/2/2026 3:4:5"
        );
        // One level down, the lines that look like its own Created On and State stay text:
        // after them comes neither the end nor a marker.
        let forged =
            "--Snapshot Created On  : 1/2/2026 3:4:5\n--Snapshot State       : powered on\nmore";
        let out = format!(
            "Get Snapshot:\n|-ROOT\n--Snapshot Name        : a\n--Snapshot Id        : 1\n\
             --Snapshot Desciption  : x\n--Snapshot Created On  : 1/1/2020 1:1:1\n\
             --Snapshot State       : powered on\n--|-CHILD\n----Snapshot Name        : b\n\
             ----Snapshot Id        : 2\n----Snapshot Desciption  : y\n{}\n\
             ----Snapshot Created On  : 1/1/2020 1:1:2\n----Snapshot State       : powered on\n",
            forged.replace("--Snapshot", "----Snapshot")
        );
        let s = parse_snapshots("get", &out).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1].description,
            format!("y\n{}", forged.replace("--Snapshot", "----Snapshot"))
        );
    }

    #[test]
    fn snapshot_create_answers_are_taken_unchanged_or_refused() {
        let c = |out| check_created("create", out);
        assert_eq!(c("Create Snapshot:\n").unwrap(), Created::Taken);
        // The text as vim-cmd prints it and as the task error says it ([VCL]).
        for unchanged in [
            "Create Snapshot:\nSnapshot not taken since the state of the virtual machine has not changed since the last snapshot operation.\n",
            "An error occurred while taking a snapshot: The state of the virtual machine has not changed since the last snapshot operation.\n",
        ] {
            assert_eq!(c(unchanged).unwrap(), Created::Unchanged);
        }
        assert!(c("Create Snapshot:\n(vmodl.fault.SystemError) {\n}\n").is_err());
    }

    #[test]
    fn removals_start_with_their_header_whatever_tree_follows() {
        assert!(removal_started(
            "Remove Snapshot:\n|-ROOT\n--Snapshot Name        : snap01\n"
        ));
        assert!(removal_started("Remove Snapshot:\n"));
        assert!(!removal_started("(vim.fault.NotFound) {\n}\n"));
    }

    #[test]
    fn hostd_hiccups_are_told_from_answers() {
        for out in [
            "Failed to login: Connection reset by peer\n",
            "Failed to login: SSL Exception: The SSL handshake timed out local: 127.0.0.1:52713 peer: 127.0.0.1:443.\n",
            "Connect to localhost failed: Connection failure\n",
            "(vmodl.fault.ManagedObjectNotFound) {\n   msg = \"The object has already been deleted or has not been completely created\",\n}\n",
            "terminate called after throwing an instance of 'std::bad_alloc'\nwhat():  std::bad_alloc\nAborted\n",
            "<unset>\n",
        ] {
            assert!(transient(out, true).is_some(), "{out}");
        }
        assert!(transient("Failed to login: Connection reset by peer\n", false).is_some());
        for out in [
            "Retrieved runtime info\nPowered on\n",
            "(vim.fault.NotFound) {\n   msg = \"Unable to find a VM corresponding to \"16\"\"\n}\n",
            "Powering on VM:\nPower on failed\n",
        ] {
            assert!(transient(out, true).is_none(), "{out}");
        }
        // An answer that exited 0: a description saying so further down is text.
        let listed =
            "Get Snapshot:\n|-ROOT\n--Snapshot Name        : a\n--Snapshot Id        : 1\n\
            --Snapshot Desciption  : x\nFailed to login: Connection reset by peer\n";
        assert!(transient(listed, false).is_none());
    }
}
