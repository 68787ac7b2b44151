//! Config-file errors that say where: the table (with the index of an
//! array-of-tables entry) and the line, for overlayd's and routed's TOML.

/// One line naming the table, the problem and the line of a TOML error:
/// `firewall.inbound[1]: unknown field `ports` (line 7)`.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    // toml's message already names the key; keep it on one line, after
    // the table it is in.
    let table = e.span().and_then(|s| enclosing_table(text, s.start));
    let msg = e.message().to_string() + &location(text, e.span());
    match table {
        Some(t) => format!("{t}: {msg}"),
        None => msg,
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    format!(" (line {line})")
}

/// The table a position in a TOML text belongs to, with the index of an
/// array-of-tables entry: `firewall.inbound[1]`, `gateway[0]`, `limits`.
pub fn enclosing_table(text: &str, pos: usize) -> Option<String> {
    let before = text.get(..pos)?;
    let header = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))?;
    if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
        let name = name.trim();
        let index = before
            .lines()
            .filter(|l| {
                l.trim()
                    .strip_prefix("[[")
                    .and_then(|h| h.strip_suffix("]]"))
                    .is_some_and(|h| h.trim() == name)
            })
            .count()
            .checked_sub(1)?;
        return Some(format!("{name}[{index}]"));
    }
    let name = header.strip_prefix('[')?.strip_suffix(']')?.trim();
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_entries_are_named() {
        assert_eq!(
            enclosing_table("[limits]\nx = 1\n", 12).as_deref(),
            Some("limits")
        );
        assert_eq!(enclosing_table("x = 1\n", 3), None);
        let t = "[[n]]\na = 1\n[[n]]\nb = 2\n";
        assert_eq!(enclosing_table(t, t.len() - 2).as_deref(), Some("n[1]"));
    }
}
