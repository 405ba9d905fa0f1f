//! Strict readers of `vim-cmd` answers: an answer that does not parse is an error naming the command and its output, never a guess.

use anyhow::{bail, Result};

use super::ssh::show_output;

/// A VM row of `vim-cmd vmsvc/getallvms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub id: u32,
    /// `[datastore] dir/file.vmx`
    pub file: String,
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
}

fn refuse(cmd: &str, out: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`{cmd}` answered something this tool does not understand ({why}): {}",
        show_output(out)
    )
}

/// The rows of `getallvms`: lines that start with a Vmid and hold `[ds] path.vmx`. Other
/// lines (annotation continuations) are skipped; a missing header is refused.
pub fn parse_getallvms(cmd: &str, out: &str) -> Result<Vec<VmRow>> {
    let mut lines = out.lines().skip_while(|l| l.trim().is_empty());
    let header = lines.next().unwrap_or("");
    let words: Vec<&str> = header.split_whitespace().collect();
    if words.first() != Some(&"Vmid") || !words.contains(&"File") {
        return Err(refuse(cmd, out, "no `Vmid ... File ...` header"));
    }
    Ok(lines.filter_map(vm_row).collect())
}

fn vm_row(line: &str) -> Option<VmRow> {
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = &line[digits..];
    if digits == 0 || !rest.starts_with([' ', '\t']) {
        return None;
    }
    let id = line[..digits].parse().ok()?;
    let open = rest.find('[')?;
    let close = open + rest[open..].find("] ")?;
    let after = &rest[close + 2..];
    let end = after
        .match_indices(".vmx")
        .map(|(i, _)| i + 4)
        .find(|&e| after[e..].is_empty() || after[e..].starts_with([' ', '\t']))?;
    Some(VmRow {
        id,
        file: format!("{}{}", &rest[open..close + 2], &after[..end]),
    })
}

/// `Retrieved runtime info` then `Powered on`, `Powered off` or `Suspended`, nothing else.
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

/// The snapshot tree: `Get Snapshot:`, then `|-ROOT`/`|-CHILD` markers and `Snapshot Name`,
/// `Id`, `Desciption` (sic), `Created On`, `State` lines, each level two more dashes.
pub fn parse_snapshots(cmd: &str, out: &str) -> Result<Vec<Snapshot>> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    if lines.next().map(str::trim) != Some("Get Snapshot:") {
        return Err(refuse(cmd, out, "no `Get Snapshot:` line first"));
    }
    let mut snaps: Vec<Snapshot> = Vec::new();
    for line in lines {
        let dashes = line.len() - line.trim_start_matches('-').len();
        let body = &line[dashes..];
        if body == "|-ROOT" || body == "|-CHILD" {
            continue;
        }
        let Some((key, value)) = body
            .strip_prefix("Snapshot ")
            .and_then(|kv| kv.split_once(':'))
        else {
            return Err(refuse(cmd, out, &format!("the line {line:?}")));
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        if dashes < 2 || dashes % 2 != 0 {
            return Err(refuse(cmd, out, &format!("the nesting of {line:?}")));
        }
        let depth = dashes / 2 - 1;
        match key.trim_end() {
            "Name" => snaps.push(Snapshot {
                name: value.to_string(),
                id: None,
                depth,
            }),
            "Id" => {
                let Some(s) = snaps
                    .last_mut()
                    .filter(|s| s.depth == depth && s.id.is_none())
                else {
                    return Err(refuse(cmd, out, "an Id line before its Name line"));
                };
                s.id = Some(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| refuse(cmd, out, &format!("the snapshot id {value:?}")))?,
                );
            }
            "Desciption" | "Description" | "Created On" | "State" => {
                if snaps.last().map(|s| s.depth) != Some(depth) {
                    return Err(refuse(cmd, out, &format!("{line:?} outside a snapshot")));
                }
            }
            _ => return Err(refuse(cmd, out, &format!("the line {line:?}"))),
        }
    }
    Ok(snaps)
}

/// `snapshot.create` succeeded only if it printed `Create Snapshot:` and nothing else.
pub fn check_created(cmd: &str, out: &str) -> Result<()> {
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines != ["Create Snapshot:"] {
        bail!("{}", refuse(cmd, out, "not `Create Snapshot:`"));
    }
    Ok(())
}

/// `snapshot.remove` succeeded only if it printed `Remove Snapshot:` and nothing else.
pub fn check_removed(cmd: &str, out: &str) -> Result<()> {
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines != ["Remove Snapshot:"] {
        bail!("{}", refuse(cmd, out, "not `Remove Snapshot:`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getallvms_rows_are_anchored_on_the_vmid_and_the_vmx_path() {
        let out = "Vmid     Name                    File                     Guest OS       Version         Annotation\n\
            2      xx         [datastore1] xx/xx.vmx               rhel8_64Guest     vmx-14\n\
            3      make make   [datastore1] make make/m m.vmx   centos8_64Guest   vmx-14    Rocky linux 8\n\
            autostart\n\
            12 notes without a path\n";
        let rows = parse_getallvms("getallvms", out).unwrap();
        assert_eq!(
            rows,
            vec![
                VmRow {
                    id: 2,
                    file: "[datastore1] xx/xx.vmx".into()
                },
                VmRow {
                    id: 3,
                    file: "[datastore1] make make/m m.vmx".into()
                },
            ]
        );
        let e = parse_getallvms("vim-cmd vmsvc/getallvms", "1 x [d] a.vmx\n").unwrap_err();
        assert!(e.to_string().contains("vim-cmd vmsvc/getallvms"), "{e}");
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
            ----Snapshot Id          : 2\n----Snapshot Desciption  : \n";
        let s = parse_snapshots("get", out).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].name.as_str(), s[0].id, s[0].depth),
            ("snap01", Some(1), 0)
        );
        assert_eq!(
            (s[1].name.as_str(), s[1].id, s[1].depth),
            ("snap02", Some(2), 1)
        );
        assert!(parse_snapshots("get", "Get Snapshot:\n")
            .unwrap()
            .is_empty());
        assert!(parse_snapshots("get", "Get Snapshot:\n--Snapshot Id : x\n").is_err());
        assert!(parse_snapshots("get", "Snapshots:\n").is_err());
        assert!(parse_snapshots("get", "Get Snapshot:\nwhatever\n").is_err());
    }
}
