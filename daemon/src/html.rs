//! The pieces both daemons' status pages are built from: escaping, the
//! page shell (inline CSS, no script, a refresh every 5 s) and readable
//! numbers. Each daemon renders its own page from its typed status.

use std::fmt::Write;

/// `s` safe as HTML text and as a quoted attribute value: names on the
/// page come from configs and certificates, and must never become markup.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The style of every status page (inline: the page's Content-Security-
/// Policy allows inline styles and nothing from elsewhere).
const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d232a;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6570;margin:0 0 16px}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08);margin-bottom:8px}
th,td{padding:5px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:middle;white-space:nowrap}
th{background:#eef1f4;font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#46505a}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.err{white-space:normal;max-width:280px;color:#8a2a2a}
td.wrap{white-space:normal;max-width:320px}
.ok{color:#176b2c;font-weight:600}
.bad{color:#b3261e;font-weight:600}
.warn{color:#94600b;font-weight:600}
.muted{color:#8a939c}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08);padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px}
.card span{color:#5b6570;font-size:12px}
.sw{display:inline-block;width:11px;height:11px;vertical-align:-1px;margin-left:6px}
.sw.up{background:#2e9e4f}.sw.down{background:#d64541}.sw.unknown{background:#d5d9de}
svg text{font:11px system-ui,sans-serif;fill:#5b6570}
footer{margin-top:28px;color:#8a939c;font-size:12px}
";

/// A whole page: `title` (plain text, escaped here) and `body` (HTML the
/// caller built from escaped parts). It refreshes itself every 5 s.
pub fn page(title: &str, body: &str) -> String {
    let title = escape(title);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"5\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n{body}\
         <footer>Refreshes every 5 s. The same figures as JSON: the control socket's \
         <code>status</code>; as Prometheus text: <code>/metrics</code>.</footer>\n\
         </body>\n</html>\n"
    )
}

/// A table: a header row and rows of cells (each cell already HTML).
/// Columns named in `numeric` (by index) are right-aligned.
#[derive(Default)]
pub struct Table {
    out: String,
    numeric: Vec<usize>,
}

impl Table {
    /// A table with these column headings (plain text).
    pub fn new(headings: &[&str], numeric: &[usize]) -> Table {
        let mut out = String::from("<table>\n<tr>");
        for (i, h) in headings.iter().enumerate() {
            let class = if numeric.contains(&i) {
                " class=\"num\""
            } else {
                ""
            };
            let _ = write!(out, "<th{class}>{}</th>", escape(h));
        }
        out.push_str("</tr>\n");
        Table {
            out,
            numeric: numeric.to_vec(),
        }
    }

    /// One row; every cell is HTML (escape text with [`escape`]).
    pub fn row(&mut self, cells: &[String]) {
        self.out.push_str("<tr>");
        for (i, c) in cells.iter().enumerate() {
            if self.numeric.contains(&i) {
                let _ = write!(self.out, "<td class=\"num\">{c}</td>");
            } else {
                let _ = write!(self.out, "<td>{c}</td>");
            }
        }
        self.out.push_str("</tr>\n");
    }

    /// One row whose cells carry their own `<td>` (for a cell with a
    /// class of its own).
    pub fn raw_row(&mut self, tds: &str) {
        let _ = writeln!(self.out, "<tr>{tds}</tr>");
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("</table>\n");
        self.out
    }
}

/// `text` (escaped) in a span of `class` (`ok`, `bad`, `warn`, `muted`).
pub fn span(class: &str, text: &str) -> String {
    format!("<span class=\"{class}\">{}</span>", escape(text))
}

/// A figure with its label, for a row of summary cards.
pub fn card(value: &str, label: &str) -> String {
    format!(
        "<div class=\"card\"><b>{}</b><span>{}</span></div>",
        escape(value),
        escape(label)
    )
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `1m`, `12s`: the two largest units, a
/// zero second one left out.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let two = |a: u64, ua: &str, b: u64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua} {b}{ub}")
        }
    };
    if d > 0 {
        two(d, "d", h, "h")
    } else if h > 0 {
        two(h, "h", m, "m")
    } else if m > 0 {
        two(m, "m", s, "s")
    } else {
        format!("{s}s")
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("a\"b&c"), "a&quot;b&amp;c");
        assert_eq!(escape("fra-gw1 ü"), "fra-gw1 ü");
        assert_eq!(
            escape("&amp;"),
            "&amp;amp;",
            "escaped once more, not decoded"
        );
        assert_eq!(escape(""), "");
    }

    #[test]
    fn the_page_escapes_its_title_and_refreshes_without_script() {
        let p = page("<b>x</b>", "<p>body</p>\n");
        assert!(p.starts_with("<!DOCTYPE html>"));
        assert!(p.contains("<title>&lt;b&gt;x&lt;/b&gt;</title>"), "{p}");
        assert!(p.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(p.contains("<p>body</p>"));
        assert!(!p.contains("<script"), "{p}");
    }

    #[test]
    fn tables_escape_headings_and_align_numbers() {
        let mut t = Table::new(&["name", "a<b"], &[1]);
        t.row(&["x".into(), "3".into()]);
        let t = t.finish();
        assert!(
            t.contains("<th>name</th><th class=\"num\">a&lt;b</th>"),
            "{t}"
        );
        assert!(t.contains("<td>x</td><td class=\"num\">3</td>"), "{t}");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(60), "1m");
        assert_eq!(duration(61), "1m 1s");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(duration(2 * 86_400 + 3600), "2d 1h");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
