//! The man pages and shell completions in doc/ are generated from the clap definition: a test fails when they no longer match the command line (`UPDATE_DOC=1 cargo test --test doc` writes them again), and scripts/install.sh puts them in their usual places.

mod util;

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::PathBuf;
use std::process::Command;
use vmdkimport::cli::Cli;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every generated file: its path under the repository and its bytes.
fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let cmd = Cli::command();
    let mut page = |c: clap::Command, name: String| {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c)
            .title(name.to_uppercase())
            .render(&mut buf)
            .unwrap();
        out.push((PathBuf::from(format!("doc/{name}.1")), buf));
    };
    page(cmd.clone(), "virt-vmdkimport".into());
    for sub in cmd.get_subcommands() {
        let name = format!("virt-vmdkimport-{}", sub.get_name());
        let bin = format!("virt-vmdkimport {}", sub.get_name());
        // clap takes a command's name as a &'static str.
        let leaked: &'static str = name.clone().leak();
        page(sub.clone().name(leaked).bin_name(bin), name);
    }
    for (shell, file) in [
        (Shell::Bash, "virt-vmdkimport.bash"),
        (Shell::Zsh, "_virt-vmdkimport"),
        (Shell::Fish, "virt-vmdkimport.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "virt-vmdkimport", &mut buf);
        out.push((PathBuf::from(format!("doc/completions/{file}")), buf));
    }
    out
}

#[test]
fn man_pages_and_completions_in_doc_match_the_command_line() {
    let update = std::env::var_os("UPDATE_DOC").is_some();
    let mut stale = Vec::new();
    for (rel, bytes) in generated() {
        let path = repo().join(&rel);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(rel.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from the clap definition: run UPDATE_DOC=1 cargo test --test doc and commit doc/"
    );
}

#[test]
fn install_sh_puts_the_binary_man_pages_and_completions_in_their_places() {
    let dest = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("scripts/install.sh"))
        .args(["--prefix", "/usr", "--destdir"])
        .arg(dest.path())
        .args(["--bin", util::BIN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", util::import::show(&out));
    let root = dest.path().join("usr");
    let want = [
        "bin/virt-vmdkimport",
        "share/man/man1/virt-vmdkimport.1",
        "share/man/man1/virt-vmdkimport-plan.1",
        "share/man/man1/virt-vmdkimport-status.1",
        "share/man/man1/virt-vmdkimport-test-boot.1",
        "share/man/man1/virt-vmdkimport-probe.1",
        "share/bash-completion/completions/virt-vmdkimport",
        "share/zsh/site-functions/_virt-vmdkimport",
        "share/fish/vendor_completions.d/virt-vmdkimport.fish",
    ];
    for f in want {
        assert!(
            root.join(f).is_file(),
            "{f} installed under {}",
            root.display()
        );
    }
    let v = Command::new(root.join("bin/virt-vmdkimport"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("virt-vmdkimport "));
    // The bash completion loads and registers itself for the command.
    let comp = root.join("share/bash-completion/completions/virt-vmdkimport");
    let b = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p virt-vmdkimport",
            comp.display()
        ))
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", util::import::show(&b));
    assert!(has_line(
        &std::fs::read_to_string(root.join("share/man/man1/virt-vmdkimport-plan.1")).unwrap(),
        "stage1"
    ));
}

fn has_line(text: &str, word: &str) -> bool {
    text.lines().any(|l| l.contains(word))
}
