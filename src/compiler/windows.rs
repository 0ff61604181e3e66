//! `window` entries of reports and schedules: the period of data a run covers
//! (`window previous day`, `window previous week starting sunday`, `window last 36h`).

use std::time::Duration;

use crate::ast::{Block, ValueKind, WindowDecl};
use crate::diagnostic::{did_you_mean, Code, Diagnostic};
use crate::window::WindowSpec;

use super::values::parse_duration;
use super::Compiler;

const PERIODS: [&str; 5] = ["day", "week", "month", "quarter", "year"];

const WINDOW_HELP: &str = "write `window previous day` (or week, month, quarter, year), \
                           `window previous week starting sunday`, or `window last 36h`";

/// The windows pass: reads a block's one `window` entry into a [`WindowSpec`].
impl Compiler<'_> {
    /// The block's window; a second one is an error.
    pub(super) fn window(&mut self, block: &Block) -> Option<WindowSpec> {
        let mut windows = block.windows();
        let first = windows.next()?;
        for again in windows {
            self.diags.push(
                Diagnostic::error(Code::Duplicate, "`window` is given more than once")
                    .label(again.span, "given again here")
                    .label(first.span, "first given here")
                    .help("keep one of them"),
            );
        }
        self.window_spec(first)
    }

    fn window_spec(&mut self, decl: &WindowDecl) -> Option<WindowSpec> {
        let words = &decl.words;
        if let Some(ValueKind::Ident(kw)) = words.first().map(|w| &w.kind) {
            if kw == "last" {
                return self.last_window(decl);
            }
        }
        let mut text = Vec::new();
        for word in words {
            match &word.kind {
                ValueKind::Ident(w) => text.push(w.as_str()),
                _ => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::InvalidValue,
                            format!("a window is written in words, found {}", word.describe()),
                        )
                        .label(word.span, "not a word of a window")
                        .help(WINDOW_HELP),
                    );
                    return None;
                }
            }
        }
        match WindowSpec::parse_period(&text.join(" ")) {
            Ok(spec) => Some(spec),
            Err(why) => {
                let period = match (text.as_slice(), words.get(1)) {
                    (["previous", word, ..], Some(value)) if !PERIODS.contains(word) => {
                        did_you_mean(word, PERIODS.iter().copied()).map(|s| (s, value.span))
                    }
                    _ => None,
                };
                let d = Diagnostic::error(Code::InvalidValue, format!("invalid window: {why}"));
                self.diags.push(match period {
                    Some((s, span)) => d
                        .label(span, "not a period")
                        .help(format!("did you mean `previous {s}`?")),
                    None => d.label(decl.span, "not a window").help(WINDOW_HELP),
                });
                None
            }
        }
    }

    /// `last DURATION`: that much elapsed time ending at the fire.
    fn last_window(&mut self, decl: &WindowDecl) -> Option<WindowSpec> {
        let (value, extra) = match decl.words.as_slice() {
            [_, value] => (Some(value), None),
            [_, _, extra, ..] => (None, Some(extra)),
            _ => (None, None),
        };
        let error = |message: String, span, label: &str| {
            Diagnostic::error(Code::BadDuration, message)
                .label(span, label)
                .help("write a duration after `last`, e.g. `window last 36h` or `window last 7d`")
        };
        let Some(value) = value else {
            let span = extra.map_or(decl.span, |e| e.span);
            self.diags.push(error(
                "`window last` takes one duration".into(),
                span,
                "here",
            ));
            return None;
        };
        let parsed = match &value.kind {
            ValueKind::Duration(text) => {
                parse_duration(text).map_err(|why| format!("bad duration `{text}`: {why}"))
            }
            ValueKind::Number(n) => Err(format!("bad duration `{n}`: no unit")),
            _ => Err(format!(
                "`window last` expects a duration, found {}",
                value.describe()
            )),
        };
        match parsed {
            Ok(d) if d > Duration::ZERO => Some(WindowSpec::Last(d)),
            Ok(_) => {
                self.diags.push(
                    Diagnostic::error(Code::OutOfRange, "a window's duration must be more than 0")
                        .label(value.span, "an empty window"),
                );
                None
            }
            Err(message) => {
                self.diags
                    .push(error(message, value.span, "not a duration"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Weekday;

    use crate::compiler::test_support::{compile_text, first, significant as codes, BASE};
    use crate::window::{Period, WindowSpec};

    fn with_window(line: &str) -> crate::compiler::Compilation {
        compile_text(&BASE.replace("  source s\n}", &format!("  source s\n  {line}\n}}")))
    }

    #[test]
    fn windows_in_words_and_durations() {
        for (line, spec) in [
            ("window previous day", WindowSpec::Previous(Period::Day)),
            (
                "window previous week starting sunday",
                WindowSpec::Previous(Period::Week {
                    starts: Weekday::Sun,
                }),
            ),
            (
                "window previous quarter",
                WindowSpec::Previous(Period::Quarter),
            ),
            (
                "window last 36h",
                WindowSpec::Last(Duration::from_secs(36 * 3600)),
            ),
        ] {
            let c = with_window(line);
            let w = c
                .workflow
                .unwrap_or_else(|| panic!("{line}: {:?}", c.diagnostics));
            assert_eq!(w.reports[0].window, Some(spec), "{line}");
        }
    }

    #[test]
    fn bad_windows_are_located() {
        let c = with_window("window previous mnth");
        assert_eq!(codes(&c), ["E014"], "{:?}", c.diagnostics);
        assert_eq!(
            first(&c).help.as_deref(),
            Some("did you mean `previous month`?")
        );
        assert_eq!(codes(&with_window("window last 36")), ["E008"]);
        assert_eq!(codes(&with_window("window last 0s")), ["E011"]);
        assert_eq!(
            codes(&with_window("window previous week starting funday")),
            ["E014"]
        );
        assert_eq!(
            codes(&with_window("window previous day\n  window last 1h")),
            ["E003"]
        );
    }
}
