//! Text from files and from ESXi hosts made safe to print: control characters (terminal escapes among them) written out as `\u{1b}` escapes, below every module that prints.

/// `s` with control characters (terminal escapes among them) written as `\u{1b}` escapes:
/// for names that come from files or from an ESXi host.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// [`sanitize`] for each line of `s`: its line breaks are kept, every other control
/// character escaped.
pub fn sanitize_lines(s: &str) -> String {
    s.split('\n').map(sanitize).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_in_a_line_are_written_out_and_line_breaks_kept() {
        assert_eq!(
            sanitize_lines("web\u{1b}[2J1\nnext\tline\r"),
            "web\\u{1b}[2J1\nnext\\u{9}line\\u{d}"
        );
    }
}
