//! The host setup's decisions: which qemu-utils apt is asked for, and no pipeline that SIGPIPE can fail.

use std::path::Path;
use std::process::Command;

/// What `scripts/lib/qemu-pin.sh` asks apt for, given a saved `apt-cache policy qemu-utils`.
fn request_for(fixture: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let policy = std::fs::read_to_string(Path::new(root).join("tests/fixtures/apt").join(fixture))
        .expect("reading the policy fixture");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(r#"source "$1/scripts/lib/qemu-pin.sh"; qemu_utils_request "$2""#)
        .args(["bash", root, &policy])
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn the_fresh_image_backported_qemu_utils_is_replaced_by_bookworms() {
    // The machine image: 10.0.2 from bookworm-backports, known only from dpkg's status file.
    assert_eq!(
        request_for("fresh-image.txt"),
        "qemu-utils=1:7.2+dfsg-7+deb12u18+b3"
    );
}

#[test]
fn a_backported_qemu_utils_with_its_source_enabled_is_replaced_too() {
    assert_eq!(
        request_for("with-backports-source.txt"),
        "qemu-utils=1:7.2+dfsg-7+deb12u18+b3"
    );
}

#[test]
fn bookworms_qemu_utils_is_kept() {
    assert_eq!(request_for("installed-bookworm.txt"), "qemu-utils");
}

#[test]
fn an_absent_qemu_utils_comes_from_bookworm() {
    assert_eq!(
        request_for("not-installed.txt"),
        "qemu-utils=1:7.2+dfsg-7+deb12u18+b3"
    );
}

#[test]
fn no_script_ends_a_pipeline_in_grep_q() {
    // Under `set -o pipefail`, `cmd | grep -q` fails whenever grep exits before cmd is done.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts = vec![root.join(".ci/run")];
    for dir in ["scripts", "scripts/lib"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "sh") {
                scripts.push(p);
            }
        }
    }
    let mut bad = Vec::new();
    for p in scripts {
        let text = std::fs::read_to_string(&p).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split(" #").next().unwrap_or("").replace("||", " or ");
            let piped_grep = code.split('|').skip(1).any(|part| {
                let w: Vec<&str> = part.split_whitespace().collect();
                w.first() == Some(&"grep")
                    && w.iter().any(|a| {
                        a.starts_with("-q")
                            || (a.starts_with('-') && !a.starts_with("--") && a.contains('q'))
                    })
            });
            if piped_grep {
                bad.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "grep -q at the end of a pipeline:\n{}",
        bad.join("\n")
    );
}
