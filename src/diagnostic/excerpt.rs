//! The few lines of a file a diagnostic shows, and nothing more.
//!
//! miette reads the source it is given from the start for every snippet, draws
//! every line between labels it decides to merge, and panics past column
//! 65,535. So it never sees a file: it sees an [`Excerpt`], a small text made
//! of the lines around the labels (each cut to [`MAX_LINE_CHARS`] characters
//! around its label, with `…` where it was cut), which reports the real line
//! and column numbers. Building one costs the size of what is shown plus a
//! binary search per label, whatever the size of the file.

use std::ops::Range;

use miette::{MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};

use crate::source_map::SourceFile;

/// The most characters of one line a diagnostic shows.
pub const MAX_LINE_CHARS: usize = 120;
/// Of which at most this many before the label.
const CHARS_BEFORE_LABEL: usize = 50;
/// Lines shown above and below a label (miette's `context_lines`).
pub const CONTEXT_LINES: usize = 1;
/// A label over more lines than this is drawn on its first line only.
const MAX_LABEL_LINES: usize = 8;
/// Labels whose context lines are at most this many lines apart are drawn as
/// one snippet, with the lines between them.
const JOIN_GAP: usize = 3;
/// What marks a cut line.
const CUT: &str = "…";

/// The lines of one file around some labels, as miette's source code.
#[derive(Debug)]
pub struct Excerpt {
    name: String,
    /// Every segment's text, one after the other.
    text: String,
    segments: Vec<Segment>,
}

/// A run of consecutive lines of the file.
#[derive(Debug)]
struct Segment {
    /// 0-based line number of the first line.
    first_line: usize,
    /// 0-based line number of the last line.
    last_line: usize,
    /// Where the segment is in [`Excerpt::text`].
    range: Range<usize>,
    /// One per line, `first_line..=last_line`.
    lines: Vec<Shown>,
}

/// One line of a segment: which bytes of the file it shows, and where.
#[derive(Debug)]
struct Shown {
    /// Where the line starts in [`Excerpt::text`].
    at: usize,
    /// Bytes of the file shown.
    window: Range<usize>,
    /// Length of the `…` before the window (0 when the line is not cut there).
    cut_before: usize,
    cut_after: usize,
    /// 0-based character column of `window.start` in the file.
    column: usize,
}

impl Excerpt {
    /// The excerpt of `file` around `spans` (byte ranges of the file), and
    /// where each span is in it.
    pub fn new(file: &SourceFile, spans: &[Range<usize>]) -> (Excerpt, Vec<SourceSpan>) {
        let text = &*file.text;
        let last_line = file.line_count().saturating_sub(1);
        // Each span on char boundaries, with the lines it covers.
        let spans: Vec<(Range<usize>, usize, usize)> = spans
            .iter()
            .map(|s| {
                let start = floor_char(text, s.start.min(text.len()));
                let mut end = floor_char(text, s.end.clamp(start, text.len()));
                let first = file.line_of(start);
                let mut last = if end > start {
                    file.line_of(end - 1)
                } else {
                    first
                };
                if last - first >= MAX_LABEL_LINES {
                    end = file.line_range(first).end.max(start);
                    last = first;
                }
                (start..end, first, last)
            })
            .collect();
        // Runs of lines to show.
        let mut runs: Vec<(usize, usize)> = spans
            .iter()
            .map(|(_, first, last)| {
                (
                    first.saturating_sub(CONTEXT_LINES),
                    (last + CONTEXT_LINES).min(last_line),
                )
            })
            .collect();
        runs.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (first, last) in runs {
            match merged.last_mut() {
                Some(prev) if first <= prev.1 + 1 + JOIN_GAP => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        let mut excerpt = Excerpt {
            name: super::printable(&file.name),
            text: String::new(),
            segments: Vec::with_capacity(merged.len()),
        };
        for (first, last) in merged {
            let start = excerpt.text.len();
            let mut lines = Vec::with_capacity(last - first + 1);
            for line in first..=last {
                // The first label point on the line is kept in view.
                let anchor = spans
                    .iter()
                    .filter_map(|(s, f, l)| {
                        if *f == line {
                            Some(s.start)
                        } else if *l == line {
                            Some(s.end)
                        } else {
                            None
                        }
                    })
                    .min();
                let range = file.line_range(line);
                let window = window(text, range.clone(), anchor);
                let cut_before = if window.start > range.start {
                    CUT.len()
                } else {
                    0
                };
                let cut_after = if window.end < range.end { CUT.len() } else { 0 };
                let column = if window.start == range.start {
                    0
                } else {
                    text[range.start..window.start].chars().count()
                };
                let at = excerpt.text.len();
                if cut_before > 0 {
                    excerpt.text.push_str(CUT);
                }
                excerpt
                    .text
                    .extend(text[window.clone()].chars().map(printable_char));
                if cut_after > 0 {
                    excerpt.text.push_str(CUT);
                }
                if line < last_line {
                    excerpt.text.push('\n');
                }
                lines.push(Shown {
                    at,
                    window,
                    cut_before,
                    cut_after,
                    column,
                });
            }
            excerpt.segments.push(Segment {
                first_line: first,
                last_line: last,
                range: start..excerpt.text.len(),
                lines,
            });
        }
        let mapped = spans
            .iter()
            .map(|(s, first, last)| {
                let start = excerpt.place(*first, s.start, false);
                let end = excerpt.place(*last, s.end, true).max(start);
                SourceSpan::new(start.into(), end - start)
            })
            .collect();
        (excerpt, mapped)
    }

    /// The text miette is given (for tests).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn segment_of_line(&self, line: usize) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| s.first_line <= line && line <= s.last_line)
    }

    /// Where byte `offset` of the file, on 0-based `line`, is in the
    /// excerpt. An offset cut off lands on the `…`: at its start for the
    /// start of a span, after it for the end.
    fn place(&self, line: usize, offset: usize, is_end: bool) -> usize {
        let Some(segment) = self.segment_of_line(line) else {
            return 0;
        };
        let shown = &segment.lines[line - segment.first_line];
        let w = &shown.window;
        if offset < w.start {
            return if is_end {
                shown.at + shown.cut_before
            } else {
                shown.at
            };
        }
        if offset > w.end {
            let end = shown.at + shown.cut_before + w.len();
            return if is_end { end + shown.cut_after } else { end };
        }
        shown.at + shown.cut_before + (offset - w.start)
    }

    /// The segment holding excerpt offset `offset`.
    fn segment_at(&self, offset: usize) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| s.range.start <= offset && offset < s.range.end)
            .or_else(|| self.segments.iter().rev().find(|s| s.range.end == offset))
    }

    /// The 0-based file column of excerpt offset `offset` in `segment`.
    fn column_at(&self, segment: &Segment, offset: usize) -> usize {
        let Some(shown) = segment.lines.iter().rev().find(|l| l.at <= offset) else {
            return 0;
        };
        let shown_start = shown.at + shown.cut_before;
        let visible = self
            .text
            .get(shown_start..offset.max(shown_start))
            .map_or(0, |s| s.chars().count());
        shown.column + visible
    }
}

impl SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let segment = self
            .segment_at(span.offset())
            .ok_or(MietteError::OutOfBounds)?;
        let local_text = &self.text[segment.range.clone()];
        let local_offset = span.offset() - segment.range.start;
        let local_len = span.len().min(local_text.len() - local_offset);
        let local = SourceSpan::new(local_offset.into(), local_len);
        let inner = local_text.read_span(&local, context_lines_before, context_lines_after)?;
        let line = segment.first_line + inner.line();
        let column = if context_lines_before == 0 {
            self.column_at(segment, span.offset())
        } else {
            inner.column()
        };
        let offset = inner.span().offset() + segment.range.start;
        // miette joins two snippets when the first one's line count reaches
        // the second one's first line: say the segment goes on to its end, so
        // exactly the snippets of one segment are joined.
        let line_count = segment.last_line + 1 - line.min(segment.last_line);
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            SourceSpan::new(offset.into(), inner.span().len()),
            line,
            column,
            line_count,
        )))
    }
}

/// The bytes of line `line` to show: all of it when short, else at most
/// [`MAX_LINE_CHARS`] characters with `anchor` in view.
fn window(text: &str, line: Range<usize>, anchor: Option<usize>) -> Range<usize> {
    // Short in bytes is short in characters.
    if line.len() <= MAX_LINE_CHARS {
        return line;
    }
    let anchor = floor_char(
        text,
        anchor.unwrap_or(line.start).clamp(line.start, line.end),
    );
    let start = back(text, line.start, anchor, CHARS_BEFORE_LABEL);
    let (end, left) = forward(text, start, line.end, MAX_LINE_CHARS);
    // Near the end of the line: spend what is left before the label.
    let start = if left > 0 {
        back(text, line.start, start, left)
    } else {
        start
    };
    start..end
}

/// The offset `n` characters before `from`, not before `limit`.
fn back(text: &str, limit: usize, from: usize, n: usize) -> usize {
    text[limit..from]
        .char_indices()
        .rev()
        .take(n)
        .last()
        .map_or(from, |(i, _)| limit + i)
}

/// The offset `n` characters after `from`, not after `limit`, and how many
/// of the `n` were left when `limit` was reached.
fn forward(text: &str, from: usize, limit: usize, n: usize) -> (usize, usize) {
    let mut taken = 0;
    let mut end = from;
    for (i, c) in text[from..limit].char_indices() {
        if taken == n {
            return (from + i, 0);
        }
        taken += 1;
        end = from + i + c.len_utf8();
    }
    (end, n - taken)
}

fn floor_char(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// A character safe to show on a terminal, of the same UTF-8 length (so
/// offsets stay valid): control characters and bidirectional overrides
/// become blanks or `·`/`�`.
fn printable_char(c: char) -> char {
    match c {
        '\t' => '\t',
        c if c.is_ascii_control() => ' ',
        // Two-byte controls become a two-byte `·`, three-byte ones a three-byte `�`.
        '\u{80}'..='\u{9f}' | '\u{61c}' => '·',
        c if super::is_bidi_control(c) => '\u{fffd}',
        c => c,
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // a list of one span
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(text: &str) -> SourceFile {
        SourceFile::new(PathBuf::from("t.flow"), "t.flow".into(), text.to_string())
    }

    #[test]
    fn a_short_file_is_shown_as_it_is() {
        let text = "a\nbb\nccc\ndddd\n";
        let f = file(text);
        let (e, spans) = Excerpt::new(&f, &[5..8]);
        assert_eq!(e.text(), "bb\nccc\ndddd\n");
        assert_eq!(&e.text()[spans[0].offset()..spans[0].offset() + 3], "ccc");
    }

    #[test]
    fn a_long_line_is_cut_around_its_label() {
        let text = format!("roles A\n{}}}\nroles B\n", " ".repeat(70_000));
        let f = file(&text);
        let at = 8 + 70_000;
        let (e, spans) = Excerpt::new(&f, &[at..at + 1]);
        let lines: Vec<&str> = e.text().lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with(CUT));
        assert!(lines[1].ends_with('}'));
        assert!(lines[1].chars().count() <= MAX_LINE_CHARS + 2);
        assert_eq!(&e.text()[spans[0].offset()..spans[0].offset() + 1], "}");
        let c = e.read_span(&spans[0], 0, 0).unwrap();
        assert_eq!((c.line(), c.column()), (1, 70_000));
    }

    #[test]
    fn a_label_longer_than_the_window_ends_at_the_cut() {
        let text = format!("zone \"{}\"\n", "x".repeat(10_000));
        let f = file(&text);
        let (e, spans) = Excerpt::new(&f, &[5..text.len() - 1]);
        assert!(e.text().len() < 4 * MAX_LINE_CHARS);
        let shown = &e.text()[spans[0].offset()..spans[0].offset() + spans[0].len()];
        assert!(
            shown.starts_with("\"xxx") && shown.ends_with(CUT),
            "{shown}"
        );
    }

    #[test]
    fn far_apart_labels_make_separate_segments() {
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let f = file(&text);
        let a = f.line_range(10).start;
        let b = f.line_range(900).start;
        let (e, spans) = Excerpt::new(&f, &[a..a + 4, b..b + 4]);
        assert_eq!(e.text().lines().count(), 6);
        let c = e.read_span(&spans[1], 1, 1).unwrap();
        assert_eq!(c.line(), 899);
        assert_eq!(
            std::str::from_utf8(c.data()).unwrap(),
            "line 899\nline 900\nline 901\n"
        );
    }

    #[test]
    fn control_characters_are_not_shown() {
        let f = file("roles \u{1b}[31mA\u{202e}\n");
        let (e, _) = Excerpt::new(&f, &[0..5]);
        assert!(!e.text().contains('\u{1b}'));
        assert!(!e.text().contains('\u{202e}'));
    }
}
