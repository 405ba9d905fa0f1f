//! The host setup's decisions: which qemu-utils apt is asked for, which mirror and registries
//! the scripts take from the machine's own configuration (none written in the repository), and
//! no pipeline that SIGPIPE can fail.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The output of `FUNCTION ARGS...` of `scripts/lib/LIB`, run by bash under `set -euo pipefail`.
fn call(lib: &str, function: &str, args: &[&str]) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(r#"source "$1/scripts/lib/$2"; "$3" "${@:4}""#)
        .args(["bash", root, lib, function])
        .args(args)
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "{function} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/apt")
        .join(name)
}

/// What `scripts/lib/qemu-pin.sh` asks apt for, given a saved `apt-cache policy qemu-utils`.
fn request_for(name: &str) -> String {
    let policy = std::fs::read_to_string(fixture(name)).expect("reading the policy fixture");
    call("qemu-pin.sh", "qemu_utils_request", &[&policy])
}

/// The mirror `scripts/lib/mirrors.sh` finds for `suite` in the apt configuration `etc_apt`.
fn mirror(suite: &str, etc_apt: &str) -> String {
    call(
        "mirrors.sh",
        "apt_mirror",
        &[suite, fixture(etc_apt).to_str().unwrap()],
    )
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
fn the_mirror_comes_from_debian_sources_in_deb822_form() {
    // The machine's form (sources.list.d/debian.sources); a deb-src stanza, a stanza with
    // `Enabled: no` and a file apt does not read (`.sources.disabled`) also name bookworm.
    assert_eq!(
        mirror("bookworm", "etc-deb822"),
        "http://mirror.example/debian"
    );
    assert_eq!(
        mirror("bookworm-security", "etc-deb822"),
        "http://security.example/debian-security"
    );
    // Field names in any case, a folded URIs field, the trailing slash dropped.
    assert_eq!(
        mirror("bookworm-backports", "etc-deb822"),
        "https://backports.example/debian"
    );
}

#[test]
fn the_mirror_comes_from_sources_list_in_one_line_form() {
    // Comments and deb-src lines skipped, `[ options ]` with blanks inside passed over.
    assert_eq!(
        mirror("bookworm", "etc-oneline"),
        "http://mirror.example/debian"
    );
    assert_eq!(
        mirror("bookworm-security", "etc-oneline"),
        "http://security.example/debian-security"
    );
    assert_eq!(
        mirror("bookworm-backports", "etc-oneline"),
        "http://backports.example:8080/debian"
    );
}

#[test]
fn no_mirror_is_made_up_when_apt_has_no_bookworm_source() {
    assert_eq!(mirror("bookworm", "etc-none"), "");
    assert_eq!(mirror("bookworm", "no-such-folder"), "");
}

#[test]
fn a_mirror_url_gives_its_host_and_port() {
    let hp = |url| call("mirrors.sh", "url_host_port", &[url]);
    assert_eq!(hp("http://mirror.example/debian"), "mirror.example:80");
    assert_eq!(hp("https://mirror.example/debian/"), "mirror.example:443");
    assert_eq!(
        hp("http://user@mirror.example:8080/debian"),
        "mirror.example:8080"
    );
}

#[test]
fn crate_registries_are_the_ones_cargo_has_used() {
    // Cargo's folders: registry/index/HOST-HASH, with the index's config.json (dl, api).
    let home = tempfile::tempdir().unwrap();
    let index = home.path().join("registry/index");
    std::fs::create_dir_all(index.join("index.registry.example-0123456789abcdef")).unwrap();
    std::fs::write(
        index.join("index.registry.example-0123456789abcdef/config.json"),
        r#"{"dl": "https://dl.registry.example/crates", "api": "https://registry.example"}"#,
    )
    .unwrap();
    // A proxying index that serves downloads itself, on a port of its own.
    std::fs::create_dir_all(index.join("proxy.example-fedcba9876543210")).unwrap();
    std::fs::write(
        index.join("proxy.example-fedcba9876543210/config.json"),
        "{\"dl\":\"https://proxy.example:8443/api/crates\",\n \"api\":\"https://proxy.example:8443/api\"}",
    )
    .unwrap();
    let hosts = call(
        "mirrors.sh",
        "cargo_registry_hosts",
        &[home.path().to_str().unwrap()],
    );
    assert_eq!(
        hosts.lines().collect::<Vec<_>>(),
        [
            "index.registry.example:443",
            "dl.registry.example:443",
            "registry.example:443",
            "proxy.example:443",
            "proxy.example:8443",
        ]
    );
    let empty = tempfile::tempdir().unwrap();
    let none = call(
        "mirrors.sh",
        "cargo_registry_hosts",
        &[empty.path().to_str().unwrap()],
    );
    assert_eq!(none, "");
}

/// The lines of `text` that name a Debian or crates.io server: any name in Debian's domain, or
/// crates.io as part of a host name or URL (a dot, slash or `@` before it, a colon or slash
/// after it), not the word in prose.
fn package_hosts(text: &str) -> Vec<String> {
    let debian = concat!("debian", ".org");
    let crates = concat!("crates", ".io");
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.contains(debian) {
            found.push(format!("line {}: {}", n + 1, line.trim()));
            continue;
        }
        for (at, _) in line.match_indices(crates) {
            let before = line[..at].chars().next_back();
            let after = line[at + crates.len()..].chars().next();
            if matches!(before, Some('.' | '/' | '@')) || matches!(after, Some(':' | '/')) {
                found.push(format!("line {}: {}", n + 1, line.trim()));
                break;
            }
        }
    }
    found
}

#[test]
fn no_package_host_is_written_in_the_repository() {
    // Mirrors and registries come from the machine's configuration (scripts/lib/mirrors.sh).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join(".ci/run")];
    let mut dirs = vec![root.join("scripts"), root.join("tests"), root.join("doc")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    let mut bad = Vec::new();
    for p in files {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue; // not text
        };
        for hit in package_hosts(&text) {
            bad.push(format!("{}: {hit}", p.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "package hosts written in:\n{}",
        bad.join("\n")
    );
    assert_eq!(
        package_hosts("fetches crates from crates.io."),
        Vec::<String>::new()
    );
    assert_eq!(
        package_hosts(concat!("https://index.crates", ".io/")).len(),
        1
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
