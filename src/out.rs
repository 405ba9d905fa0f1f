//! The tool's standard output: text that never panics when stdout is closed (`| head`), so the work goes on and the import state is still recorded.

use std::fmt::Arguments;
use std::io::Write;

/// Write `args` and a newline to stdout; a closed or broken stdout is ignored.
pub fn line(args: Arguments) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
}

/// Write `args` to stdout as they are; a closed or broken stdout is ignored.
pub fn text(args: Arguments) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.flush());
}

/// `println!` for the tool's output: never panics on a closed stdout.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}

/// `print!` for the tool's output: never panics on a closed stdout.
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!($($arg)*))
    };
}

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
