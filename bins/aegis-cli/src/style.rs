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
}
