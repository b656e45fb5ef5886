//! Terminal styling: colour only on a terminal, and never with `NO_COLOR` set.

use std::fmt::Display;
use std::io::IsTerminal;

/// Whether to colour output, decided once at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Styles {
    stdout: bool,
    stderr: bool,
}

impl Styles {
    /// Colour a stream only when it is a terminal and `NO_COLOR` is unset or empty.
    pub(crate) fn detect() -> Styles {
        let allowed = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Styles {
            stdout: allowed && std::io::stdout().is_terminal(),
            stderr: allowed && std::io::stderr().is_terminal(),
        }
    }

    /// No colour anywhere, for tests.
    #[cfg(test)]
    pub(crate) fn plain() -> Styles {
        Styles { stdout: false, stderr: false }
    }

    fn paint(on: bool, code: &str, text: impl Display) -> String {
        if on { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    /// An error label, for stderr.
    pub(crate) fn error(&self, text: impl Display) -> String {
        Self::paint(self.stderr, "1;31", text)
    }

    /// A red word on stdout.
    pub(crate) fn red(&self, text: impl Display) -> String {
        Self::paint(self.stdout, "1;31", text)
    }

    /// A yellow word on stdout.
    pub(crate) fn yellow(&self, text: impl Display) -> String {
        Self::paint(self.stdout, "1;33", text)
    }

    /// A green word on stdout.
    pub(crate) fn green(&self, text: impl Display) -> String {
        Self::paint(self.stdout, "32", text)
    }

    /// Bold text on stdout.
    pub(crate) fn bold(&self, text: impl Display) -> String {
        Self::paint(self.stdout, "1", text)
    }

    /// A word painted after a run or step status: green for success, yellow while
    /// active or skipped, red for every way of ending badly.
    pub(crate) fn run_status(&self, status: &str, text: impl Display) -> String {
        match status {
            "succeeded" | "healthy" => self.green(text),
            "queued" | "running" | "waiting" | "skipped" | "unhealthy" => self.yellow(text),
            _ => self.red(text),
        }
    }
}

/// Lays out a table: columns padded to their widest cell and separated by two spaces,
/// the header bold, trailing spaces trimmed. `paint` may colour a padded cell, given its
/// row and column.
pub(crate) fn table(
    styles: Styles,
    header: &[&str],
    rows: &[Vec<String>],
    paint: impl Fn(usize, usize, String) -> String,
) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| cells.join("  ").trim_end().to_owned();
    let mut lines = Vec::with_capacity(rows.len() + 1);
    let head = header.iter().zip(&widths).map(|(h, w)| format!("{h:<w$}")).collect();
    lines.push(styles.bold(line(head)));
    for (r, row) in rows.iter().enumerate() {
        let cells = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                let padded = format!("{cell:<w$}");
                // The last column is not padded, so trimming never eats a colour code.
                let padded = if c + 1 == row.len() { cell.clone() } else { padded };
                paint(r, c, padded)
            })
            .collect();
        lines.push(line(cells));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let plain = Styles::plain();
        let rows = vec![vec!["a".to_owned(), "long value".to_owned(), "x".to_owned()]];
        let lines = table(plain, &["ID", "V", "LAST"], &rows, |_, _, cell| cell);
        assert_eq!(lines, ["ID  V           LAST", "a   long value  x"]);
    }
}
