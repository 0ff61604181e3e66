//! The one-pass parser for valid files: `grammar/flow.pest` written out by hand.
//!
//! It accepts the grammar's `file` rule with the grammar's own PEG semantics (ordered choice,
//! greedy repetition that gives back only the failed attempt, implicit blanks and comments
//! exactly where the grammar's non-atomic rules have them) and builds the same tree, spans and
//! diagnostics as the pest parser's builder. It never explains an error: at the first thing it
//! does not expect it gives up, and the pest parser parses the file again, item by item, to say
//! what is wrong where. Property tests hold the two to the same trees on valid files and check
//! that this one never accepts a file the grammar rejects.
//!
//! Why: pest's generic machinery (a token queue, then `Pairs` walked back into a tree) is most
//! of the time it takes to compile a large workflow; this reads each byte once and builds the
//! tree as it goes.

use crate::ast::{
    Block, DependencyDecl, Entry, FlowFile, Ident, Item, ItemKind, MaskRule, ParamDecl,
    ParamOption, ParamTypeDecl, Setting, Value, ValueKind, WindowDecl,
};
use crate::diagnostic::Diagnostic;
use crate::source_map::{FileId, Span};

use super::{number_value, unescape, Parsed};

/// Parses a whole file; `None` when it does not match the grammar.
pub(super) fn parse(file: FileId, text: &str) -> Option<Parsed> {
    let mut p = P {
        b: text.as_bytes(),
        text,
        pos: 0,
        file,
        diagnostics: Vec::new(),
    };
    let mut items = Vec::new();
    // file = SOI ~ (nl | item_end)* ~ EOI, with blanks and comments between.
    p.skip();
    while p.pos < p.b.len() {
        if !p.byte(b'\n') {
            items.push(p.item()?);
            // item_end = item ~ (nl | &EOI)
            p.skip();
            if !p.byte(b'\n') && p.pos < p.b.len() {
                return None;
            }
        }
        p.skip();
    }
    Some(Parsed {
        file: FlowFile { items },
        diagnostics: p.diagnostics,
    })
}

struct P<'t> {
    text: &'t str,
    b: &'t [u8],
    pos: usize,
    file: FileId,
    diagnostics: Vec<Diagnostic>,
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

impl P<'_> {
    fn span(&self, start: usize, end: usize) -> Span {
        Span::new(self.file, start, end)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// Consumes `b` if it is next.
    fn byte(&mut self, b: u8) -> bool {
        let next = self.peek() == Some(b);
        self.pos += usize::from(next);
        next
    }

    fn comment(&mut self) {
        if self.peek() == Some(b'#') {
            self.pos +=
                memchr::memchr(b'\n', &self.b[self.pos..]).unwrap_or(self.b.len() - self.pos);
        }
    }

    /// The implicit blanks of non-atomic rules: `(WHITESPACE | COMMENT)*`.
    fn skip(&mut self) {
        loop {
            match self.peek() {
                Some(b) if is_blank(b) => self.pos += 1,
                Some(b'#') => self.comment(),
                _ => return,
            }
        }
    }

    /// `sp = (" " | "\t" | "\r")+`
    fn sp(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// `gap = (sp | COMMENT | nl)*`
    fn gap(&mut self) {
        loop {
            match self.peek() {
                Some(b) if is_blank(b) || b == b'\n' => self.pos += 1,
                Some(b'#') => self.comment(),
                _ => return,
            }
        }
    }

    /// `eol = sp? ~ COMMENT? ~ nl`
    fn eol(&mut self) -> bool {
        let start = self.pos;
        self.sp();
        self.comment();
        if self.byte(b'\n') {
            return true;
        }
        self.pos = start;
        false
    }

    /// A keyword: the word and a word end.
    fn keyword(&mut self, word: &str) -> bool {
        let end = self.pos + word.len();
        if self.b.get(self.pos..end) == Some(word.as_bytes())
            && !self.b.get(end).copied().is_some_and(is_word)
        {
            self.pos = end;
            return true;
        }
        false
    }

    /// `ident = (ASCII_ALPHA | "_") ~ (ASCII_ALPHANUMERIC | "_")*`
    fn ident(&mut self) -> Option<Ident> {
        let start = self.pos;
        match self.peek() {
            Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
            _ => return None,
        }
        self.pos += 1;
        while self.peek().is_some_and(is_word) {
            self.pos += 1;
        }
        Some(Ident {
            name: self.text[start..self.pos].to_string(),
            span: self.span(start, self.pos),
        })
    }

    /// `x ~ (sp? ~ comma ~ gap ~ x)*` for ident and value lists.
    fn list<T>(&mut self, mut one: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let mut items = vec![one(self)?];
        loop {
            let before = self.pos;
            self.sp();
            if self.byte(b',') {
                self.gap();
                if let Some(item) = one(self) {
                    items.push(item);
                    continue;
                }
            }
            self.pos = before;
            return Some(items);
        }
    }

    fn ident_list(&mut self) -> Option<Vec<Ident>> {
        self.list(Self::ident)
    }

    /// `value = ident | raw_string | string | number | duration`
    fn value(&mut self) -> Option<Value> {
        let start = self.pos;
        if let Some(ident) = self.ident() {
            return Some(Value {
                kind: ValueKind::Ident(ident.name),
                span: ident.span,
            });
        }
        if self.b[self.pos..].starts_with(b"\"\"\"") {
            // raw_string = "\"\"\"" ~ (!"\"\"\"" ~ ANY)* ~ "\"\"\"". Unterminated, the grammar
            // falls back to `string`, which reads `""` and leaves a `"` that nothing after a
            // value accepts: the file does not parse either way.
            let body = self.pos + 3;
            let close = body + memchr::memmem::find(&self.b[body..], b"\"\"\"")?;
            self.pos = close + 3;
            return Some(Value {
                kind: ValueKind::RawStr(self.text[body..close].to_string()),
                span: self.span(start, self.pos),
            });
        }
        if let Some(value) = self.string() {
            return Some(value);
        }
        // number = "-"? ~ ASCII_DIGIT+ ~ !(ASCII_ALPHA | "_")
        self.byte(b'-');
        if self.digits()
            && !self
                .peek()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            let span = self.span(start, self.pos);
            let kind = number_value(&self.text[start..self.pos], span, &mut self.diagnostics);
            return Some(Value { kind, span });
        }
        // duration = (ASCII_DIGIT+ ~ ASCII_ALPHA+)+
        self.pos = start;
        let mut end = start;
        while self.digits() && self.letters() {
            end = self.pos;
        }
        self.pos = end;
        (end > start).then(|| Value {
            kind: ValueKind::Duration(self.text[start..end].to_string()),
            span: self.span(start, end),
        })
    }

    fn digits(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn letters(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// `string = "\"" ~ (escape | !("\"" | "\\" | "\n" | "\r") ~ ANY)* ~ "\""`
    fn string(&mut self) -> Option<Value> {
        let start = self.pos;
        if !self.byte(b'"') {
            return None;
        }
        loop {
            match self.peek()? {
                b'"' => break,
                b'\n' | b'\r' => return None,
                b'\\' => {
                    self.pos += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'n' | b't' | b'r' => self.pos += 1,
                        // "u{" ~ ASCII_HEX_DIGIT{1, 6} ~ "}"
                        b'u' if self.b.get(self.pos + 1) == Some(&b'{') => {
                            self.pos += 2;
                            let hex = self.b[self.pos..]
                                .iter()
                                .take(6)
                                .take_while(|b| b.is_ascii_hexdigit())
                                .count();
                            self.pos += hex;
                            if hex == 0 || !self.byte(b'}') {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                }
                _ => self.pos += 1,
            }
        }
        let raw = &self.text[start + 1..self.pos];
        self.pos += 1;
        let span = self.span(start, self.pos);
        let text = unescape(raw, span, &mut self.diagnostics);
        Some(Value {
            kind: ValueKind::Str(text),
            span,
        })
    }

    /// `block = open ~ gap ~ (entry ~ (eol ~ gap ~ entry)*)? ~ gap ~ close`
    fn block(&mut self) -> Option<Block> {
        let start = self.pos;
        if !self.byte(b'{') {
            return None;
        }
        self.gap();
        let mut entries = Vec::new();
        let before = self.pos;
        match self.entry() {
            Some(first) => {
                entries.push(first);
                loop {
                    let before = self.pos;
                    if self.eol() {
                        self.gap();
                        if let Some(entry) = self.entry() {
                            entries.push(entry);
                            continue;
                        }
                    }
                    self.pos = before;
                    break;
                }
            }
            None => self.pos = before,
        }
        self.gap();
        if !self.byte(b'}') {
            return None;
        }
        Some(Block {
            entries,
            span: self.span(start, self.pos),
        })
    }

    /// `entry = setting | mask_rule | param_decl | window_decl`
    fn entry(&mut self) -> Option<Entry> {
        let start = self.pos;
        if let Some(setting) = self.setting() {
            return Some(Entry::Setting(setting));
        }
        self.pos = start;
        let entry = match self.peek() {
            Some(b'm') => self.mask_rule().map(Entry::Mask),
            Some(b'p') => self.param_decl().map(Entry::Param),
            Some(b'w') => self.window_decl().map(Entry::Window),
            _ => None,
        };
        if entry.is_none() {
            self.pos = start;
        }
        entry
    }

    /// `setting = !(kw_mask | kw_param | kw_window) ~ ident ~ sp ~ value_list`
    fn setting(&mut self) -> Option<Setting> {
        let start = self.pos;
        let reserved = match self.peek() {
            Some(b'm') => self.keyword("mask"),
            Some(b'p') => self.keyword("param"),
            Some(b'w') => self.keyword("window"),
            _ => false,
        };
        if reserved {
            return None;
        }
        let key = self.ident()?;
        if !self.sp() {
            return None;
        }
        let values = self.list(Self::value)?;
        let end = values
            .last()
            .map_or(key.span.end as usize, |v| v.span.end as usize);
        Some(Setting {
            key,
            values,
            span: self.span(start, end),
        })
    }

    /// `mask_rule = !{ kw_mask ~ ident ~ ident ~ for_roles? ~ except_roles? }`, blanks and
    /// comments between.
    fn mask_rule(&mut self) -> Option<MaskRule> {
        let start = self.pos;
        if !self.keyword("mask") {
            return None;
        }
        self.skip();
        let field = self.ident()?;
        self.skip();
        let method = self.ident()?;
        let mut end = method.span.end as usize;
        self.skip();
        let for_roles = self.roles_after("for", &mut end);
        self.skip();
        let except_roles = self.roles_after("except", &mut end);
        Some(MaskRule {
            field,
            method,
            for_roles,
            except_roles,
            span: self.span(start, end),
        })
    }

    /// `param_decl = !{ kw_param ~ ident ~ param_type ~ param_option* }`, blanks and comments
    /// between.
    fn param_decl(&mut self) -> Option<ParamDecl> {
        let start = self.pos;
        if !self.keyword("param") {
            return None;
        }
        self.skip();
        let name = self.ident()?;
        self.skip();
        let ty = self.param_type()?;
        let mut end = ty.span().end as usize;
        let mut options = Vec::new();
        loop {
            let before = self.pos;
            self.skip();
            match self.param_option() {
                Some(option) => {
                    end = option.span().end as usize;
                    options.push(option);
                }
                None => {
                    self.pos = before;
                    break;
                }
            }
        }
        Some(ParamDecl {
            name,
            ty,
            options,
            span: self.span(start, end),
        })
    }

    /// `param_type = { one_of | !kw_one_of ~ ident }`, `one_of = ${ kw_one_of ~ sp? ~
    /// paren_open ~ sp? ~ value_list? ~ sp? ~ paren_close }`
    fn param_type(&mut self) -> Option<ParamTypeDecl> {
        let start = self.pos;
        if !self.keyword("one_of") {
            return self.ident().map(ParamTypeDecl::Named);
        }
        self.sp();
        if !self.byte(b'(') {
            return None;
        }
        self.sp();
        let before = self.pos;
        let options = match self.list(Self::value) {
            Some(options) => options,
            None => {
                self.pos = before;
                Vec::new()
            }
        };
        self.sp();
        if !self.byte(b')') {
            return None;
        }
        Some(ParamTypeDecl::OneOf {
            options,
            span: self.span(start, self.pos),
        })
    }

    /// `param_default | param_required | param_help`; nothing read when none is next.
    fn param_option(&mut self) -> Option<ParamOption> {
        let start = self.pos;
        if self.keyword("required") {
            return Some(ParamOption::Required(self.span(start, self.pos)));
        }
        let help = if self.keyword("default") {
            false
        } else if self.keyword("help") {
            true
        } else {
            return None;
        };
        self.skip();
        let Some(value) = self.value() else {
            self.pos = start;
            return None;
        };
        let span = self.span(start, value.span.end as usize);
        Some(if help {
            ParamOption::Help { value, span }
        } else {
            ParamOption::Default { value, span }
        })
    }

    /// `window_decl = ${ kw_window ~ (sp ~ value)+ }`
    fn window_decl(&mut self) -> Option<WindowDecl> {
        let start = self.pos;
        if !self.keyword("window") {
            return None;
        }
        let mut words = Vec::new();
        loop {
            let before = self.pos;
            if self.sp() {
                if let Some(word) = self.value() {
                    words.push(word);
                    continue;
                }
            }
            self.pos = before;
            break;
        }
        let end = words.last()?.span.end as usize;
        Some(WindowDecl {
            words,
            span: self.span(start, end),
        })
    }

    /// An optional `{ kw ~ ident_list }`: its names (none if absent); moves `end` past them.
    fn roles_after(&mut self, keyword: &str, end: &mut usize) -> Vec<Ident> {
        let start = self.pos;
        if self.keyword(keyword) {
            self.skip();
            if let Some(roles) = self.ident_list() {
                *end = roles.last().map_or(*end, |r| r.span.end as usize);
                return roles;
            }
        }
        self.pos = start;
        Vec::new()
    }

    fn item(&mut self) -> Option<Item> {
        let start = self.pos;
        let kind = match self.peek()? {
            b'r' if self.keyword("report") => {
                // report = ${ kw_report ~ sp ~ ident ~ sp? ~ block }
                if !self.sp() {
                    return None;
                }
                let name = self.ident()?;
                self.sp();
                ItemKind::Report(name, self.block()?)
            }
            b'a' if self.keyword("after") => ItemKind::Dependency(self.dependency()?),
            b's' if self.keyword("schedule") => {
                let (name, block) = self.named_block()?;
                ItemKind::Schedule(name, block)
            }
            b's' if self.keyword("source") => {
                let (name, block) = self.named_block()?;
                ItemKind::Source(name, block)
            }
            b'm' if self.keyword("masking") => {
                let (name, block) = self.named_block()?;
                ItemKind::Masking(name, block)
            }
            b'r' if self.keyword("roles") => {
                self.skip();
                ItemKind::Roles(self.ident_list()?)
            }
            b'c' if self.keyword("config") => {
                self.skip();
                ItemKind::Config(self.block()?)
            }
            b'i' if self.keyword("include") => {
                self.skip();
                ItemKind::Include(self.string()?)
            }
            _ => return None,
        };
        let end = match &kind {
            ItemKind::Include(value) => value.span.end,
            ItemKind::Config(block)
            | ItemKind::Source(_, block)
            | ItemKind::Masking(_, block)
            | ItemKind::Report(_, block)
            | ItemKind::Schedule(_, block) => block.span.end,
            ItemKind::Roles(roles) => roles.last()?.span.end,
            ItemKind::Dependency(dep) => match (&dep.block, &dep.as_role) {
                (Some(block), _) => block.span.end,
                (None, Some(role)) => role.span.end,
                (None, None) => dep.child.span.end,
            },
        };
        Some(Item {
            kind,
            span: self.span(start, end as usize),
        })
    }

    /// `kw ~ ident ~ block` with blanks and comments between (the keyword is read).
    fn named_block(&mut self) -> Option<(Ident, Block)> {
        self.skip();
        let name = self.ident()?;
        self.skip();
        Some((name, self.block()?))
    }

    /// After `after`: `sp ~ parents ~ (sp ~ condition)? ~ (sp ~ by_roles)? ~ sp ~ kw_run ~ sp
    /// ~ ident ~ (sp ~ as_role)? ~ (sp? ~ block)?`
    fn dependency(&mut self) -> Option<DependencyDecl> {
        if !self.sp() {
            return None;
        }
        let parents = self.ident_list()?;
        let condition = self.clause("on", Self::ident);
        let by_roles = self.clause("by", Self::ident_list).unwrap_or_default();
        if !(self.sp() && self.keyword("run") && self.sp()) {
            return None;
        }
        let child = self.ident()?;
        let as_role = self.clause("as", Self::ident);
        let before = self.pos;
        self.sp();
        let block = self.block();
        if block.is_none() {
            self.pos = before;
        }
        Some(DependencyDecl {
            parents,
            condition,
            by_roles,
            child,
            as_role,
            block,
        })
    }

    /// `(sp ~ clause)?` for a clause `kw ~ sp ~ value`: the value, or nothing read.
    fn clause<T>(&mut self, keyword: &str, value: fn(&mut Self) -> Option<T>) -> Option<T> {
        let before = self.pos;
        let found = if self.sp() && self.keyword(keyword) && self.sp() {
            value(self)
        } else {
            None
        };
        if found.is_none() {
            self.pos = before;
        }
        found
    }
}
