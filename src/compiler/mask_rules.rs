//! Mask rules: `masking` blocks (shared rule sets) and the `mask` rules written
//! in them or inline in a report.

use crate::ast::Block;
use crate::diagnostic::{did_you_mean, Code, Diagnostic};
use crate::masking::MaskMethod;
use crate::source_map::Span;
use crate::workflow::MaskRule;

use super::names::Scope;
use super::Compiler;

/// The mask-rules pass: reads `mask` rules (their roles checked against the
/// scope), writes each [`MaskRule`] with the span of its field, and the errors.
impl Compiler<'_> {
    /// The rules of a `masking` block, which holds nothing else.
    pub(super) fn mask_rules(&mut self, block: &Block, scope: &Scope<'_>) -> Vec<(MaskRule, Span)> {
        for setting in block.settings() {
            self.diags.push(
                Diagnostic::error(
                    Code::UnknownSetting,
                    format!("`{}` is not allowed in a masking block", setting.key.name),
                )
                .label(setting.key.span, "only `mask` rules go here")
                .help("write rules as `mask FIELD METHOD [for ROLES] [except ROLES]`"),
            );
        }
        let others = block
            .params()
            .map(|p| ("param", p.span))
            .chain(block.windows().map(|w| ("window", w.span)));
        for (what, span) in others {
            self.diags.push(
                Diagnostic::error(
                    Code::UnknownSetting,
                    format!("a `{what}` is not allowed in a masking block"),
                )
                .label(span, "only `mask` rules go here")
                .help("write rules as `mask FIELD METHOD [for ROLES] [except ROLES]`"),
            );
        }
        block
            .masks()
            .filter_map(|rule| self.mask_rule(rule, scope))
            .collect()
    }

    /// A mask rule, with the span of its field name.
    pub(super) fn mask_rule(
        &mut self,
        rule: &crate::ast::MaskRule,
        scope: &Scope<'_>,
    ) -> Option<(MaskRule, Span)> {
        let method = match MaskMethod::from_name(&rule.method.name) {
            Some(m) => Some(m),
            None => {
                let mut d = Diagnostic::error(
                    Code::BadMaskMethod,
                    format!("unknown masking method `{}`", rule.method.name),
                )
                .label(rule.method.span, "not a masking method");
                d = d.help(match did_you_mean(&rule.method.name, MaskMethod::NAMES.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? methods: redact, last4, hash, null"),
                    None => "methods: redact (****), last4 (keep the last 4 characters), hash (keyed SHA-256), null".to_string(),
                });
                self.diags.push(d);
                None
            }
        };
        let for_roles: Vec<String> = rule
            .for_roles
            .iter()
            .filter(|r| scope.check_role(r, &mut self.diags))
            .map(|r| r.name.clone())
            .collect();
        let except_roles: Vec<String> = rule
            .except_roles
            .iter()
            .filter(|r| scope.check_role(r, &mut self.diags))
            .map(|r| r.name.clone())
            .collect();
        for r in &rule.except_roles {
            if rule.for_roles.iter().any(|f| f.name == r.name) {
                self.diags.push(
                    Diagnostic::error(
                        Code::MaskRoles,
                        format!("role `{}` is both masked and in clear", r.name),
                    )
                    .label(r.span, "listed after `except`")
                    .help(
                        "a role goes after `for` (masked) or after `except` (in clear), not both",
                    ),
                );
            }
        }
        let mask = MaskRule {
            field: rule.field.name.clone(),
            method: method?,
            for_roles: (!rule.for_roles.is_empty()).then_some(for_roles),
            except_roles,
        };
        Some((mask, rule.field.span))
    }
}

#[cfg(test)]
mod tests {
    use crate::compiler::test_support::{compile_text, BASE};

    #[test]
    fn mask_rules_keep_the_span_of_their_field() {
        let text = format!(
            "masking pii {{\n  mask ssn last4\n}}\n{}",
            BASE.replace(
                "  source s\n}",
                "  source s\n  masking pii\n  mask name redact\n}"
            )
        );
        let c = compile_text(&text);
        let w = c.workflow.expect("compiles");
        let spans = &w.locations.mask_fields[0];
        let fields: Vec<&str> = spans.iter().map(|s| c.sources.text(*s)).collect();
        // Inline rules first, like the rules themselves.
        assert_eq!(fields, ["name", "ssn"]);
        assert_eq!(w.reports[0].masks.len(), 2);
        let refused = compile_text(&text.replace(
            "  mask ssn last4\n",
            "  mask ssn last4\n  param p string\n  window last 1h\n",
        ));
        let codes: Vec<&str> = refused
            .diagnostics
            .iter()
            .filter(|d| d.message.contains("not allowed in a masking block"))
            .map(|d| d.code.as_str())
            .collect();
        assert_eq!(codes, ["E012", "E012"], "{:?}", refused.diagnostics);
        assert_eq!(
            c.sources
                .text(w.locations.sources[0].county_column.unwrap()),
            "county_id"
        );
    }
}
