//! `flowctl fmt`: prints a parsed file back in canonical form.
//!
//! Canonical means: two-space indentation, one declaration per line, setting
//! keys aligned within a block, mask rules aligned, lists on one line as
//! `A, B, C`, strings with canonical escapes, at most one blank line between
//! declarations and always one around a block. Comments are kept: a comment
//! on its own line stays before the declaration or setting that follows it; a
//! comment at the end of a line stays at the end of that line. Formatting
//! never changes the compiled workflow, and formatting formatted text changes
//! nothing.

use crate::ast::{
    Block, DependencyDecl, Entry, FlowFile, Ident, ItemKind, MaskRule, ParamDecl, ParamOption,
    ParamTypeDecl, Value, ValueKind,
};

struct Comment {
    start: usize,
    /// Text from `#` to the end of the line, trailing blanks removed.
    text: String,
    /// Whether code precedes it on its line.
    trailing: bool,
}

/// Finds comments, skipping `#` inside strings (triple-quoted ones included).
fn comments(text: &str) -> Vec<Comment> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut line_has_code = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                line_has_code = false;
                i += 1;
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                line_has_code = true;
                // To the first `"""` after the opening one (a parsed file has it).
                i = memchr::memmem::find(&bytes[i + 3..], b"\"\"\"")
                    .map_or(bytes.len(), |n| i + 3 + n + 3);
            }
            b'"' => {
                line_has_code = true;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'#' => {
                let start = i;
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                out.push(Comment {
                    start,
                    text: text[start..i].trim_end().to_string(),
                    trailing: line_has_code,
                });
            }
            b' ' | b'\t' | b'\r' => i += 1,
            _ => {
                line_has_code = true;
                i += 1;
            }
        }
    }
    out
}

struct Printer<'a> {
    text: &'a str,
    comments: Vec<Comment>,
    next_comment: usize,
    out: String,
}

/// Formats one file. `text` must be the text `file` was parsed from.
pub fn format(text: &str, file: &FlowFile) -> String {
    let mut p = Printer {
        text,
        comments: comments(text),
        next_comment: 0,
        out: String::with_capacity(text.len() + text.len() / 8),
    };
    let mut prev_multiline = false;
    for (i, item) in file.items.iter().enumerate() {
        let start = item.span.start as usize;
        let multiline = has_block(&item.kind);
        if i > 0 && (multiline || prev_multiline || p.blank_line_before(start)) {
            p.out.push('\n');
        }
        p.leading_comments(start, "");
        p.item(&item.kind, item.span.end as usize);
        prev_multiline = multiline;
    }
    // Comments after the last item.
    let rest: Vec<String> = p.comments[p.next_comment..]
        .iter()
        .map(|c| c.text.clone())
        .collect();
    if !rest.is_empty() && !p.out.is_empty() {
        p.out.push('\n');
    }
    for c in rest {
        p.out.push_str(&c);
        p.out.push('\n');
    }
    p.out
}

fn has_block(kind: &ItemKind) -> bool {
    match kind {
        ItemKind::Config(_)
        | ItemKind::Source(..)
        | ItemKind::Masking(..)
        | ItemKind::Report(..)
        | ItemKind::Schedule(..) => true,
        ItemKind::Dependency(d) => d.block.is_some(),
        ItemKind::Include(_) | ItemKind::Roles(_) => false,
    }
}

impl Printer<'_> {
    /// Whether the source had a blank line right before the comments and
    /// code that precede `start`.
    fn blank_line_before(&self, start: usize) -> bool {
        let first = self
            .comments
            .get(self.next_comment)
            .filter(|c| c.start < start && !c.trailing)
            .map_or(start, |c| c.start);
        let before = &self.text[..first];
        let trimmed = before.trim_end_matches([' ', '\t', '\r']);
        let Some(rest) = trimmed.strip_suffix('\n') else {
            return false;
        };
        rest.trim_end_matches([' ', '\t', '\r']).ends_with('\n')
    }

    fn leading_comments(&mut self, before: usize, indent: &str) {
        while let Some(c) = self.comments.get(self.next_comment) {
            if c.start >= before {
                break;
            }
            // A trailing comment inside a multi-line list lands here too: it
            // becomes its own line before the declaration.
            self.out.push_str(indent);
            self.out.push_str(&c.text);
            self.out.push('\n');
            self.next_comment += 1;
            // Keep one blank line between a comment and what follows it, if
            // the source had one (a file header, a section banner).
            let next = self
                .comments
                .get(self.next_comment)
                .map_or(before, |n| n.start.min(before));
            let end = c.start + c.text.len();
            if self
                .text
                .get(end..next)
                .is_some_and(|gap| gap.matches('\n').count() >= 2)
            {
                self.out.push('\n');
            }
        }
    }

    /// Comments that start on the line where `end` is, after it: printed at
    /// the end of the current output line.
    fn trailing_comment(&mut self, end: usize) {
        let line_end = self.text[end..]
            .find('\n')
            .map_or(self.text.len(), |i| end + i);
        let mut trailing = Vec::new();
        while let Some(c) = self.comments.get(self.next_comment) {
            if c.start >= end && c.start < line_end {
                trailing.push(c.text.clone());
                self.next_comment += 1;
            } else {
                break;
            }
        }
        if !trailing.is_empty() {
            self.out.push_str("  ");
            self.out.push_str(&trailing.join(" "));
        }
    }

    fn item(&mut self, kind: &ItemKind, end: usize) {
        match kind {
            ItemKind::Include(v) => {
                self.out.push_str("include ");
                self.out.push_str(&value(v));
            }
            ItemKind::Roles(r) => {
                self.out.push_str("roles ");
                self.out.push_str(&idents(r));
            }
            ItemKind::Config(b) => {
                self.out.push_str("config ");
                self.block(b);
            }
            ItemKind::Source(n, b) => self.named("source", n, b),
            ItemKind::Masking(n, b) => self.named("masking", n, b),
            ItemKind::Report(n, b) => self.named("report", n, b),
            ItemKind::Schedule(n, b) => self.named("schedule", n, b),
            ItemKind::Dependency(d) => self.dependency(d),
        }
        self.trailing_comment(end);
        self.out.push('\n');
    }

    fn named(&mut self, kw: &str, name: &Ident, block: &Block) {
        self.out.push_str(kw);
        self.out.push(' ');
        self.out.push_str(&name.name);
        self.out.push(' ');
        self.block(block);
    }

    fn dependency(&mut self, d: &DependencyDecl) {
        self.out.push_str("after ");
        self.out.push_str(&idents(&d.parents));
        if let Some(c) = &d.condition {
            self.out.push_str(" on ");
            self.out.push_str(&c.name);
        }
        if !d.by_roles.is_empty() {
            self.out.push_str(" by ");
            self.out.push_str(&idents(&d.by_roles));
        }
        self.out.push_str(" run ");
        self.out.push_str(&d.child.name);
        if let Some(r) = &d.as_role {
            self.out.push_str(" as ");
            self.out.push_str(&r.name);
        }
        if let Some(b) = &d.block {
            self.out.push(' ');
            self.block(b);
        }
    }

    fn block(&mut self, block: &Block) {
        let open_end = block.span.start as usize + 1;
        self.out.push('{');
        self.trailing_comment(open_end);
        self.out.push('\n');
        let key_width = block
            .settings()
            .map(|s| s.key.name.len())
            .chain(block.windows().map(|_| "window".len()))
            .max()
            .unwrap_or(0);
        let param_width = block.params().map(|p| p.name.name.len()).max().unwrap_or(0);
        let type_width = block
            .params()
            .map(|p| param_type(&p.ty).len())
            .max()
            .unwrap_or(0);
        let field_width = block.masks().map(|m| m.field.name.len()).max().unwrap_or(0);
        let method_width = block
            .masks()
            .map(|m| m.method.name.len())
            .max()
            .unwrap_or(0);
        for (i, entry) in block.entries.iter().enumerate() {
            let start = entry.span().start as usize;
            if i > 0 && self.blank_line_before(start) {
                self.out.push('\n');
            }
            self.leading_comments(start, "  ");
            self.out.push_str("  ");
            match entry {
                Entry::Setting(s) => {
                    let values: Vec<String> = s.values.iter().map(value).collect();
                    self.out
                        .push_str(&format!("{:<key_width$} {}", s.key.name, values.join(", ")));
                }
                Entry::Mask(m) => self.mask(m, field_width, method_width),
                Entry::Param(p) => self.param(p, param_width, type_width),
                Entry::Window(w) => {
                    let words: Vec<String> = w.words.iter().map(value).collect();
                    self.out
                        .push_str(&format!("{:<key_width$} {}", "window", words.join(" ")));
                }
            }
            self.trailing_comment(entry.span().end as usize);
            self.out.push('\n');
        }
        let close = block.span.end as usize - 1;
        self.leading_comments(close, "  ");
        self.out.push('}');
    }

    fn mask(&mut self, m: &MaskRule, field_width: usize, method_width: usize) {
        let mut line = format!(
            "mask {:<field_width$} {:<method_width$}",
            m.field.name, m.method.name
        );
        if !m.for_roles.is_empty() {
            line.push_str(" for ");
            line.push_str(&idents(&m.for_roles));
        }
        if !m.except_roles.is_empty() {
            line.push_str(" except ");
            line.push_str(&idents(&m.except_roles));
        }
        self.out.push_str(line.trim_end());
    }
}

impl Printer<'_> {
    fn param(&mut self, p: &ParamDecl, name_width: usize, type_width: usize) {
        let mut line = format!(
            "param {:<name_width$} {:<type_width$}",
            p.name.name,
            param_type(&p.ty)
        );
        for option in &p.options {
            match option {
                ParamOption::Default { value: v, .. } => {
                    line.push_str(" default ");
                    line.push_str(&value(v));
                }
                ParamOption::Required(_) => line.push_str(" required"),
                ParamOption::Help { value: v, .. } => {
                    line.push_str(" help ");
                    line.push_str(&value(v));
                }
            }
        }
        self.out.push_str(line.trim_end());
    }
}

fn param_type(ty: &ParamTypeDecl) -> String {
    match ty {
        ParamTypeDecl::Named(id) => id.name.clone(),
        ParamTypeDecl::OneOf { options, .. } => {
            let options: Vec<String> = options.iter().map(value).collect();
            format!("one_of({})", options.join(", "))
        }
    }
}

fn idents(list: &[Ident]) -> String {
    list.iter()
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn value(v: &Value) -> String {
    match &v.kind {
        ValueKind::Str(s) => quote(s),
        // Verbatim: it has no escapes, and its lines are the query's.
        ValueKind::RawStr(s) => format!("\"\"\"{s}\"\"\""),
        ValueKind::Number(n) => n.to_string(),
        ValueKind::Duration(d) => d.clone(),
        ValueKind::Ident(i) => i.clone(),
    }
}

/// A string literal with canonical escapes.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;
    use crate::source_map::FileId;

    fn fmt(text: &str) -> String {
        let parsed = parse(FileId(0), text);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        format(text, &parsed.file)
    }

    #[test]
    fn aligns_and_keeps_comments() {
        let src = "# head\nreport   R {  # opens\n  # about source\n  source cases\n    chunk_size   10 # small\n  mask ssn last4 for A\n  mask client_name redact\n}\nafter R run S\n# tail\n";
        let out = fmt(src);
        assert_eq!(
            out,
            "# head\nreport R {  # opens\n  # about source\n  source     cases\n  chunk_size 10  # small\n  mask ssn         last4  for A\n  mask client_name redact\n}\n\nafter R run S\n\n# tail\n"
        );
        assert_eq!(fmt(&out), out, "idempotent");
    }

    #[test]
    fn idempotent_on_lists_and_strings() {
        let src = "roles A,B,\n  C\ninclude \"a\\\"b\"\nafter A,B on completion by C run D as inherit {\nchunk_size 5\n}\n";
        let once = fmt(src);
        assert_eq!(fmt(&once), once);
        assert!(once.contains("roles A, B, C\n"));
        assert!(once.contains("after A, B on completion by C run D as inherit {"));
    }

    #[test]
    fn queries_params_and_windows_print_as_written() {
        let src = "report R {\n  source db\n    query   \"\"\"\n  SELECT '#no', \"q\" -- x\n    FROM t WHERE a = :status\n\"\"\"   # after\n  param status one_of( \"A\",\"B\" )  default \"A\" help \"h\"\n  param as_of_day   date required\n  window   previous week   starting sunday\n  zone \"UTC\"\n}\n";
        let out = fmt(src);
        assert_eq!(
            out,
            "report R {\n  source db\n  query  \"\"\"\n  SELECT '#no', \"q\" -- x\n    FROM t WHERE a = :status\n\"\"\"  # after\n  param status    one_of(\"A\", \"B\") default \"A\" help \"h\"\n  param as_of_day date             required\n  window previous week starting sunday\n  zone   \"UTC\"\n}\n"
        );
        assert_eq!(fmt(&out), out, "idempotent");
    }

    #[test]
    fn hash_inside_string_is_not_a_comment() {
        let out = fmt("source s {\n  path \"a#b.csv\"\n}\n");
        assert!(out.contains("\"a#b.csv\""));
        assert!(!out.contains("\n#"));
    }
}
