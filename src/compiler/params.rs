//! `param` declarations of a report: a name, a type, a default or `required`, a help text.
//!
//! The type is one of [`ParamType::NAMES`] or `one_of("A", "B")`; a default is parsed by the
//! type ([`ParamSpec::parse_text`]) here, so a workflow whose default does not fit never
//! compiles. The built-ins ([`BUILT_INS`]) are the engine's and cannot be declared.

use crate::ast::{Block, ParamDecl, ParamOption, ParamTypeDecl, Value, ValueKind};
use crate::diagnostic::{did_you_mean, Code, Diagnostic};
use crate::params::{ParamSpec, ParamType, BUILT_INS};
use crate::source_map::Span;

use super::Compiler;

/// A report's declared parameters: the valid ones, and every declared name with its span (a
/// placeholder naming a declaration with an error is not reported a second time as unknown).
#[derive(Debug, Default)]
pub(super) struct Declared {
    pub(super) specs: Vec<ParamSpec>,
    pub(super) names: Vec<(String, Span)>,
}

/// The params pass: reads a report block's `param` entries into [`ParamSpec`]s.
impl Compiler<'_> {
    pub(super) fn params(&mut self, block: &Block) -> Declared {
        let mut declared = Declared::default();
        for decl in block.params() {
            let name = &decl.name;
            if BUILT_INS.contains(&name.name.as_str()) {
                self.diags.push(
                    Diagnostic::error(
                        Code::BadParam,
                        format!("`{}` is a built-in parameter", name.name),
                    )
                    .label(name.span, "the engine binds this one for every run")
                    .help(format!(
                        "use `:{}` in the query without declaring it, or choose another name (built-ins: {})",
                        name.name,
                        BUILT_INS.join(", ")
                    )),
                );
                continue;
            }
            if let Some((_, first)) = declared.names.iter().find(|(n, _)| *n == name.name) {
                self.diags.push(
                    Diagnostic::error(
                        Code::Duplicate,
                        format!("parameter `{}` is declared twice", name.name),
                    )
                    .label(name.span, "declared again here")
                    .label(*first, "first declared here")
                    .help("keep one of them"),
                );
                continue;
            }
            declared.names.push((name.name.clone(), name.span));
            if let Some(spec) = self.param(decl) {
                declared.specs.push(spec);
            }
        }
        declared
    }

    fn param(&mut self, decl: &ParamDecl) -> Option<ParamSpec> {
        let ty = self.param_type(&decl.ty);
        let mut default: Option<&Value> = None;
        let mut required: Option<Span> = None;
        let mut help: Option<String> = None;
        let mut seen: Vec<(&str, Span)> = Vec::new();
        let mut ok = true;
        for option in &decl.options {
            let key = match option {
                ParamOption::Default { .. } => "default",
                ParamOption::Required(_) => "required",
                ParamOption::Help { .. } => "help",
            };
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                self.diags.push(
                    Diagnostic::error(Code::Duplicate, format!("`{key}` is given more than once"))
                        .label(option.span(), "given again here")
                        .label(*first, "first given here")
                        .help("keep one of them"),
                );
                ok = false;
                continue;
            }
            seen.push((key, option.span()));
            match option {
                ParamOption::Default { value, .. } => default = Some(value),
                ParamOption::Required(span) => required = Some(*span),
                ParamOption::Help { value, .. } => match value.as_str() {
                    Some(text) => help = Some(text.to_string()),
                    None => {
                        self.diags.push(
                            Diagnostic::error(
                                Code::InvalidValue,
                                format!(
                                    "`help` expects a quoted string, found {}",
                                    value.describe()
                                ),
                            )
                            .label(value.span, "expected a quoted string"),
                        );
                        ok = false;
                    }
                },
            }
        }
        if let (Some(value), Some(span)) = (default, required) {
            self.diags.push(
                Diagnostic::error(
                    Code::BadParam,
                    format!(
                        "parameter `{}` is both `required` and has a `default`",
                        decl.name.name
                    ),
                )
                .label(span, "required")
                .label(value.span, "but has a default")
                .help("a parameter with a default is never missing: keep `default` or `required`"),
            );
            ok = false;
        }
        let mut spec = ParamSpec {
            name: decl.name.name.clone(),
            ty: ty?,
            default: None,
            required: required.is_some(),
            help: help.unwrap_or_default(),
        };
        if let Some(value) = default {
            spec.default = Some(self.default_value(&spec, value)?);
        }
        ok.then_some(spec)
    }

    fn param_type(&mut self, ty: &ParamTypeDecl) -> Option<ParamType> {
        match ty {
            ParamTypeDecl::Named(id) => {
                let ty = ParamType::from_name(&id.name);
                if ty.is_none() {
                    let names = ParamType::NAMES.iter().copied().chain(["one_of"]);
                    self.diags.push(
                        Diagnostic::error(
                            Code::BadParam,
                            format!("unknown parameter type `{}`", id.name),
                        )
                        .label(id.span, "not a type")
                        .help(match did_you_mean(&id.name, names) {
                            Some("one_of") => "did you mean `one_of(\"A\", \"B\")`?".to_string(),
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!(
                                "types: {}, or one_of(\"A\", \"B\")",
                                ParamType::NAMES.join(", ")
                            ),
                        }),
                    );
                }
                ty
            }
            ParamTypeDecl::OneOf { options, span } => {
                if options.is_empty() {
                    self.diags.push(
                        Diagnostic::error(Code::BadParam, "`one_of` lists no options")
                            .label(*span, "no value could be given")
                            .help("list the allowed values: one_of(\"OPEN\", \"CLOSED\")"),
                    );
                    return None;
                }
                let mut texts: Vec<String> = Vec::new();
                let mut ok = true;
                for option in options {
                    let Some(text) = option.as_str() else {
                        self.diags.push(
                            Diagnostic::error(
                                Code::BadParam,
                                format!(
                                    "a `one_of` option is a quoted string, found {}",
                                    option.describe()
                                ),
                            )
                            .label(option.span, "expected a quoted string")
                            .help(match &option.kind {
                                ValueKind::Ident(s) => format!("write \"{s}\""),
                                ValueKind::Number(n) => format!("write \"{n}\""),
                                _ => "write the option in quotes".to_string(),
                            }),
                        );
                        ok = false;
                        continue;
                    };
                    if texts.iter().any(|t| t == text) {
                        self.diags.push(
                            Diagnostic::error(
                                Code::Duplicate,
                                format!("`one_of` lists \"{text}\" twice"),
                            )
                            .label(option.span, "listed again here")
                            .help("list each option once"),
                        );
                        ok = false;
                        continue;
                    }
                    texts.push(text.to_string());
                }
                ok.then_some(ParamType::OneOf(texts))
            }
        }
    }

    /// A default, as written (a string, a number, `true` or `false`), parsed by the type.
    fn default_value(
        &mut self,
        spec: &ParamSpec,
        value: &Value,
    ) -> Option<crate::params::ParamValue> {
        let text = match &value.kind {
            ValueKind::Str(s) | ValueKind::RawStr(s) => s.clone(),
            ValueKind::Number(n) => n.to_string(),
            ValueKind::Ident(b) if b == "true" || b == "false" => b.clone(),
            _ => {
                self.diags.push(
                    Diagnostic::error(
                        Code::BadParam,
                        format!(
                            "the default of `{}` must be a string, a number, `true` or `false`, not {}",
                            spec.name,
                            value.describe()
                        ),
                    )
                    .label(value.span, "not a default value")
                    .help("quote it: default \"…\""),
                );
                return None;
            }
        };
        match spec.parse_text(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::BadParam,
                        format!("bad default for parameter `{}`: {}", spec.name, e.message),
                    )
                    .label(value.span, format!("not {}", type_word(&spec.ty)))
                    .help("a default must be a value the parameter accepts"),
                );
                None
            }
        }
    }
}

/// The type in a label: "not a date", "not one of the options".
fn type_word(ty: &ParamType) -> &'static str {
    match ty {
        ParamType::String => "a string",
        ParamType::Integer => "an integer",
        ParamType::Decimal => "a decimal",
        ParamType::Date => "a date",
        ParamType::Timestamp => "a timestamp",
        ParamType::Boolean => "a boolean",
        ParamType::OneOf(_) => "one of the options",
    }
}

#[cfg(test)]
mod tests {
    use crate::compiler::test_support::{compile_text, first, significant as codes};
    use crate::compiler::Compilation;
    use crate::params::{ParamType, ParamValue};

    fn with_param(line: &str) -> Compilation {
        compile_text(&format!(
            "roles A\nsource db {{\n  postgres DB_URL\n}}\nreport R {{\n  source db\n  {line}\n  query \"SELECT :x\"\n}}\n"
        ))
    }

    #[test]
    fn every_type_and_its_default() {
        for (line, ty, default) in [
            ("param x string", ParamType::String, None),
            (
                "param x integer default -3",
                ParamType::Integer,
                Some(ParamValue::Integer(-3)),
            ),
            (
                "param x decimal default \"0\"",
                ParamType::Decimal,
                Some(ParamValue::Decimal("0".into())),
            ),
            (
                "param x boolean default true",
                ParamType::Boolean,
                Some(ParamValue::Boolean(true)),
            ),
            ("param x date required help \"day\"", ParamType::Date, None),
            ("param x timestamp", ParamType::Timestamp, None),
            (
                "param x one_of(\"A\")",
                ParamType::OneOf(vec!["A".into()]),
                None,
            ),
        ] {
            let c = with_param(line);
            let w = c
                .workflow
                .unwrap_or_else(|| panic!("{line}: {:?}", c.diagnostics));
            assert_eq!(w.reports[0].params[0].ty, ty, "{line}");
            assert_eq!(w.reports[0].params[0].default, default, "{line}");
        }
    }

    #[test]
    fn bad_declarations_are_errors_where_written() {
        for (line, code) in [
            ("param x date default \"yesterday\"", "E024"),
            ("param x integer default \"1.5\"", "E024"),
            ("param x one_of(\"A\") default \"B\"", "E024"),
            ("param x string default maybe", "E024"),
            ("param x strin", "E024"),
            ("param x one_of()", "E024"),
            ("param x one_of(A)", "E024"),
            ("param x one_of(\"A\", \"A\")", "E003"),
            ("param x string required default \"a\"", "E024"),
            ("param x string help \"a\" help \"b\"", "E003"),
            ("param x string help 5", "E014"),
        ] {
            assert_eq!(codes(&with_param(line)), [code], "{line}");
        }
        let c = with_param("param x date default \"yesterday\"");
        let d = first(&c);
        assert_eq!(c.sources.text(d.primary_span().unwrap()), "\"yesterday\"");
        assert!(d.message.contains("is not a date"), "{}", d.message);
    }

    #[test]
    fn built_ins_and_duplicates_cannot_be_declared() {
        let c = with_param("param county string\n  param x string\n  param x integer");
        assert_eq!(codes(&c), ["E024", "E003"], "{:?}", c.diagnostics);
        let c =
            compile_text("roles A\nschedule s {\n  param x string\n  cron \"0 0 5 * * ?\"\n}\n");
        assert!(codes(&c).contains(&"E012"), "{:?}", c.diagnostics);
    }
}
