//! `schedule` blocks: when (cron, zone), what (reports), as whom (roles,
//! counties) and what to do about missed fires; the county rule (E021).

use crate::ast::{Block, Ident, Setting, ValueKind};
use crate::cron_expr::CronExpr;
use crate::diagnostic::{Code, Diagnostic};
use crate::source_map::Span;
use crate::workflow::{CatchUp, Schedule};

use super::names::{Map, Scope};
use super::Compiler;

const SCHEDULE_KEYS: &[&str] = &["cron", "zone", "run", "roles", "counties", "catch_up"];

/// The schedules pass: reads one `schedule` block, resolving its `run` list by
/// name (marking each report `triggered`) and its roles against the scope, writes
/// the [`Schedule`] and its errors.
impl Compiler<'_> {
    /// `all_counties`: the config's roles that see every county, exempt from the
    /// county rule.
    pub(super) fn schedule(
        &mut self,
        name: &Ident,
        block: &Block,
        scope: &Scope<'_>,
        reports: &Map<&str, usize>,
        all_counties: &[String],
        triggered: &mut [bool],
    ) -> Schedule {
        let mut cron = None;
        let mut zone = chrono_tz::UTC;
        let mut run = Vec::new();
        let mut roles = Vec::new();
        let mut role_idents = Vec::new();
        let mut counties = Vec::new();
        let mut catch_up = CatchUp::Once;
        let (mut has_cron, mut has_run, mut has_roles) = (false, false, false);
        for setting in self.settings(block, SCHEDULE_KEYS, "schedule") {
            match setting.key.name.as_str() {
                "cron" => {
                    has_cron = true;
                    cron = self.cron_value(setting);
                }
                "zone" => {
                    if let Some(tz) = self.zone_value(setting) {
                        zone = tz;
                    }
                }
                "run" => {
                    has_run = true;
                    for v in &setting.values {
                        if let Some(id) = self.as_ident(v, setting) {
                            if let Some(i) = self.resolve(&id, "report", reports) {
                                triggered[i] = true;
                                run.push(id.name.clone());
                            }
                        }
                    }
                }
                "roles" => {
                    has_roles = true;
                    for v in &setting.values {
                        if let Some(id) = self.as_ident(v, setting) {
                            if scope.check_role(&id, &mut self.diags) {
                                roles.push(id.name.clone());
                                role_idents.push(id);
                            }
                        }
                    }
                }
                "counties" => {
                    for v in &setting.values {
                        match &v.kind {
                            ValueKind::Str(s) | ValueKind::RawStr(s) => counties.push(s.clone()),
                            ValueKind::Ident(s) => counties.push(s.clone()),
                            ValueKind::Number(n) => counties.push(n.to_string()),
                            ValueKind::Duration(_) => self.wrong_kind(v, setting, "a county id"),
                        }
                    }
                }
                "catch_up" => {
                    if let Some(id) = self.ident_value(setting) {
                        match CatchUp::from_name(&id.name) {
                            Some(c) => catch_up = c,
                            None => self.bad_keyword(&id, "catch-up policy", &CatchUp::NAMES),
                        }
                    }
                }
                _ => {}
            }
        }
        if !has_cron {
            self.missing(name, "schedule", "cron", "cron \"0 30 5 * * ?\"");
        }
        if !has_run {
            self.missing(name, "schedule", "run", "run DAILY_REPORT");
        }
        if !has_roles {
            self.missing(name, "schedule", "roles", "roles ADMIN");
        }
        if counties.is_empty() {
            // The county rule: a fire for a county-scoped role must say which counties.
            for id in role_idents
                .iter()
                .filter(|id| !all_counties.contains(&id.name))
            {
                self.diags.push(
                    Diagnostic::error(
                        Code::CountyRequired,
                        format!(
                            "schedule `{}` runs as county-scoped role `{}` but names no counties",
                            name.name, id.name
                        ),
                    )
                    .label(id.span, "this role sees one county's rows at a time")
                    .help(format!(
                        "add `counties \"C01\", \"C02\"` (one job per role and county), or list `{}` in the config's `all_counties` if it may see every county",
                        id.name
                    )),
                );
            }
        }
        Schedule {
            name: name.name.clone(),
            cron: cron.unwrap_or_else(|| {
                CronExpr::parse("0 0 0 1 1 ?").unwrap_or_else(|_| unreachable!("a valid literal"))
            }),
            zone,
            reports: run,
            roles,
            counties,
            window: self.window(block),
            catch_up,
        }
    }

    /// A Quartz cron expression; an error points inside the string when it can.
    fn cron_value(&mut self, setting: &Setting) -> Option<CronExpr> {
        let (text, span) = self.one_string(setting)?;
        match CronExpr::parse(&text) {
            Ok(c) => Some(c),
            Err(err) => {
                // Point inside the string when the text maps 1:1 (no escapes).
                let raw = self.sources.text(span);
                let inner_span = if raw.len() == text.len() + 2 {
                    let start = span.start as usize + 1 + err.offset;
                    Span::new(span.file, start, start + err.len.max(1))
                } else {
                    span
                };
                let label = match &err.field {
                    Some(f) => format!("in the {} field", f.name()),
                    None => "here".to_string(),
                };
                self.diags.push(
                    Diagnostic::error(Code::InvalidCron, format!("invalid cron expression: {}", err.message))
                        .label(inner_span, label)
                        .help("Quartz cron: second minute hour day-of-month month day-of-week [year], e.g. \"0 30 5 * * ?\" (05:30 daily); day-of-week 1 = Sunday or SUN-SAT"),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::compiler::test_support::{codes, compile_text, BASE};

    #[test]
    fn no_role_sees_all_counties_unless_declared() {
        let c = compile_text(&format!(
            "{BASE}schedule d {{\n  cron \"0 0 5 * * ?\"\n  run R\n  roles ADMIN\n}}\n"
        ));
        assert_eq!(codes(&c), ["E021"], "{:?}", c.diagnostics);
        assert!(c.workflow.is_none());
    }

    #[test]
    fn a_schedule_for_a_county_scoped_role_must_name_counties() {
        let config = "config {\n  all_counties ADMIN\n}\n";
        let c = compile_text(&format!(
            "{config}{BASE}schedule d {{\n  cron \"0 0 5 * * ?\"\n  run R\n  roles CASE_WORKER, ADMIN\n}}\n"
        ));
        assert_eq!(codes(&c), ["E021"], "{:?}", c.diagnostics);
        assert!(c.diagnostics[0].message.contains("CASE_WORKER"));
        let c = compile_text(&format!(
            "{config}{BASE}schedule d {{\n  cron \"0 0 5 * * ?\"\n  run R\n  roles CASE_WORKER, ADMIN\n  counties \"C1\"\n}}\n"
        ));
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        let w = c.workflow.unwrap();
        assert!(w.sees_all_counties("ADMIN") && !w.sees_all_counties("CASE_WORKER"));
        assert!(w.check_county("ADMIN", None).is_ok());
        assert!(w.check_county("CASE_WORKER", Some("C1")).is_ok());
        let refused = w.check_county("CASE_WORKER", None).unwrap_err();
        assert!(
            refused.to_string().contains("CASE_WORKER is county-scoped"),
            "{refused}"
        );
    }
}
