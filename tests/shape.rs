//! scripts/check-shape.sh on the tiny crate of tests/fixtures/shape: it names the long method and the import cycle, and is not fooled by braces or paths in literals, comments and `$crate`.

use std::path::Path;
use std::process::{Command, Output};

/// `scripts/check-shape.sh ARGS... tests/fixtures/shape/src`, run from the repository's root.
fn check_shape(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("bash")
        .arg(root.join("scripts/check-shape.sh"))
        .args(args)
        .arg("tests/fixtures/shape/src")
        .current_dir(root)
        .output()
        .expect("running scripts/check-shape.sh")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.stderr.is_empty(),
        "check-shape.sh wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn a_function_over_the_limit_is_named_with_its_length_and_place() {
    let text = stdout(&check_shape(&["--report"]));
    assert!(
        text.contains("85  tests/fixtures/shape/src/a.rs:10  Walker::long_one\n"),
        "{text}"
    );
    assert!(text.contains("Functions over 80 lines: 1 "), "{text}");
    assert!(
        !text.contains("just_fits"),
        "80 lines is not over 80: {text}"
    );
}

#[test]
fn the_longest_functions_are_listed_on_request_and_literals_hold_no_braces() {
    let text = stdout(&check_shape(&["--report", "--top", "3"]));
    let top = text
        .split("The 3 longest functions:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no list of the longest: {text}"));
    let lines: Vec<&str> = top.lines().take(3).map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "85  tests/fixtures/shape/src/a.rs:10  Walker::long_one",
            "80  tests/fixtures/shape/src/a.rs:97  just_fits",
            "7  tests/fixtures/shape/src/a.rs:179  tricky",
        ],
        "{text}"
    );
}

#[test]
fn a_cycle_is_printed_between_modules_and_between_top_level_modules() {
    let text = stdout(&check_shape(&["--report"]));
    assert!(text.contains("    cycle: a -> b::c -> a\n"), "{text}");
    assert!(
        text.contains("a -> b::c: tests/fixtures/shape/src/a.rs:3 crate::b::c::Thing (1)"),
        "{text}"
    );
    assert!(
        text.contains("b::c -> a: tests/fixtures/shape/src/b/c.rs:6 super::super::a::helper (1)"),
        "{text}"
    );
    assert!(text.contains("    cycle: a -> b -> a\n"), "{text}");
    // e names crate::a only in a comment, a string and `$crate::`; b re-exports b::c.
    assert!(!text.contains("e ->") && !text.contains("-> e"), "{text}");
    assert!(!text.contains("b -> b::c"), "{text}");
}

#[test]
fn findings_fail_the_check_unless_only_reporting() {
    assert_eq!(check_shape(&[]).status.code(), Some(1));
    assert_eq!(check_shape(&["--limit", "100"]).status.code(), Some(1));
    assert_eq!(check_shape(&["--report"]).status.code(), Some(0));
    assert_eq!(check_shape(&["--limit", "nine"]).status.code(), Some(2));
}
