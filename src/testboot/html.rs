//! The plan's test boots as one HTML page: a row per VM with its verdict, its evidence, the last screenshot as a thumbnail, and links to the rest of its report.

use crate::xmltree::escape;

use super::Outcome;

/// One VM's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub vm: String,
    /// `booted`, `failed`, `unknown`, or `error` when the test boot did not run.
    pub verdict: String,
    pub evidence: String,
    pub watched_s: Option<u64>,
    /// The VM's report folder, relative to the page.
    pub folder: Option<String>,
    /// Screenshot files in it, oldest first.
    pub shots: Vec<String>,
}

impl Row {
    pub fn done(vm: &str, folder: &str, out: &Outcome) -> Row {
        Row {
            vm: vm.to_string(),
            verdict: out.finding.verdict.as_str().to_string(),
            evidence: out.finding.evidence.clone(),
            watched_s: Some(out.watched.as_secs()),
            folder: Some(folder.to_string()),
            shots: out.shots.clone(),
        }
    }

    pub fn error(vm: &str, error: &str) -> Row {
        Row {
            vm: vm.to_string(),
            verdict: "error".into(),
            evidence: error.to_string(),
            watched_s: None,
            folder: None,
            shots: Vec::new(),
        }
    }
}

/// A VM name as a folder name: letters, digits, `.`, `_` and `-` kept, anything else `_`.
pub fn folder_name(vm: &str) -> String {
    let s: String = vm
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with('.') || s.is_empty() {
        format!("_{s}")
    } else {
        s
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}\
td,th{border:1px solid #999;padding:.4em .6em;vertical-align:top;text-align:left}\
.booted{background:#c8f0c8}.failed{background:#f5c0c0}.unknown{background:#f0e6b0}.error{background:#ddd}\
img{width:320px;image-rendering:pixelated;border:1px solid #444}";

/// The page.
pub fn page(title: &str, rows: &[Row]) -> String {
    let mut body = String::new();
    for r in rows {
        body += &row_html(r);
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head>\n\
         <body><h1>{t}</h1>\n<table>\n<tr><th>VM</th><th>Verdict</th><th>Evidence</th><th>Watched</th><th>Last screen</th><th>Report</th></tr>\n{body}</table>\n</body></html>\n",
        t = escape(title)
    )
}

fn row_html(r: &Row) -> String {
    let link = |file: &str, label: &str| match &r.folder {
        Some(f) => format!(
            "<a href=\"{}/{}\">{}</a>",
            escape(f),
            escape(file),
            escape(label)
        ),
        None => String::new(),
    };
    let thumb = match (&r.folder, r.shots.last()) {
        (Some(f), Some(s)) => format!(
            "<a href=\"{f}/{s}\"><img src=\"{f}/{s}\" alt=\"last screen of {vm}\"></a>",
            f = escape(f),
            s = escape(s),
            vm = escape(&r.vm)
        ),
        _ => "no screenshot".into(),
    };
    let mut links = vec![
        link("report.json", "report.json"),
        link("console.log", "console log"),
    ];
    links.extend(
        r.shots
            .iter()
            .enumerate()
            .map(|(i, s)| link(s, &format!("screen {}", i + 1))),
    );
    format!(
        "<tr class=\"{v}\"><td>{vm}</td><td>{v}</td><td>{e}</td><td>{w}</td><td>{thumb}</td><td>{l}</td></tr>\n",
        v = escape(&r.verdict),
        vm = escape(&r.vm),
        e = escape(&r.evidence),
        w = r.watched_s.map(|s| format!("{s} s")).unwrap_or_default(),
        l = links.join("<br>")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vm_gets_a_row_with_its_thumbnail_and_names_are_escaped() {
        let rows = vec![
            Row {
                vm: "web<1>".into(),
                verdict: "booted".into(),
                evidence: "login prompt: web1 login:".into(),
                watched_s: Some(31),
                folder: Some(folder_name("web<1>")),
                shots: vec![
                    "screen-001-000500ms.png".into(),
                    "screen-002-030000ms.png".into(),
                ],
            },
            Row::error("db1", "domain 'db1' does not exist"),
        ];
        let html = page("Test boots of m.toml", &rows);
        assert!(html.contains("<td>web&lt;1&gt;</td>"), "{html}");
        assert!(
            html.contains("<img src=\"web_1_/screen-002-030000ms.png\""),
            "{html}"
        );
        assert!(html.contains("<tr class=\"error\"><td>db1</td>"), "{html}");
        assert_eq!(html.matches("<tr class=").count(), 2);
    }

    #[test]
    fn folder_names_keep_to_safe_characters() {
        assert_eq!(folder_name("../etc"), "_.._etc");
        assert_eq!(folder_name("web-1.a_b"), "web-1.a_b");
        assert_eq!(folder_name(""), "_");
    }
}
