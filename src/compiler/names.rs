//! Names: declarations unique within their kind, and references resolved to
//! them, with a did-you-mean suggestion when a name is unknown.

use std::collections::HashMap;

use crate::ast::Ident;
use crate::diagnostic::{did_you_mean, Code, Diagnostic};

use super::Compiler;

/// FNV-1a: name lookups hash short strings, where SipHash's DoS resistance
/// buys nothing (the input is the user's own file) and costs a third of the
/// compile time of a large workflow.
#[derive(Default, Clone, Copy)]
pub(super) struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The compiler's map from names to declaration indexes, hashed with [`Fnv`].
pub(super) type Map<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// A declaration that survived the duplicate check: its index among the
/// declarations of its kind, and its name.
pub(super) struct Named<'a> {
    pub(super) index: usize,
    pub(super) ident: &'a Ident,
}

/// The name → index map of the declarations that are kept.
pub(super) fn index_of<'a>(named: &[Named<'a>]) -> Map<&'a str, usize> {
    named
        .iter()
        .map(|n| (n.ident.name.as_str(), n.index))
        .collect()
}

/// The names pass: reads the declarations' names, writes duplicate and
/// unknown-name errors to `diags`.
impl Compiler<'_> {
    /// Names must be unique within their kind; later duplicates are reported
    /// pointing at both and left out.
    pub(super) fn unique<'a>(
        &mut self,
        kind: &str,
        idents: impl Iterator<Item = &'a Ident>,
    ) -> Vec<Named<'a>> {
        let mut seen: Map<&str, &Ident> = Map::default();
        let mut out = Vec::new();
        for (index, ident) in idents.enumerate() {
            if let Some(first) = seen.get(ident.name.as_str()) {
                self.diags.push(
                    Diagnostic::error(
                        Code::Duplicate,
                        format!("{kind} `{}` is defined more than once", ident.name),
                    )
                    .label(ident.span, "defined again here")
                    .label(first.span, "first defined here")
                    .help(format!("rename one of them or remove the duplicate {kind}")),
                );
            } else {
                seen.insert(&ident.name, ident);
                out.push(Named { index, ident });
            }
        }
        out
    }

    /// The index of the declaration `id` names among `names`, or an unknown-name
    /// error (with a suggestion) and `None`.
    pub(super) fn resolve(
        &mut self,
        id: &Ident,
        kind: &str,
        names: &Map<&str, usize>,
    ) -> Option<usize> {
        if let Some(i) = names.get(id.name.as_str()) {
            return Some(*i);
        }
        unknown(&mut self.diags, id, kind, names.keys().copied());
        None
    }
}

/// Role references check against the declared `roles`.
pub(super) struct Scope<'a> {
    pub(super) roles: &'a Map<&'a str, usize>,
    pub(super) role_names: &'a [String],
}

impl Scope<'_> {
    /// Whether `id` is a declared role; if not, an error is pushed to `diags`.
    pub(super) fn check_role(&self, id: &Ident, diags: &mut Vec<Diagnostic>) -> bool {
        if self.roles.contains_key(id.name.as_str()) {
            return true;
        }
        if self.role_names.is_empty() {
            diags.push(
                Diagnostic::error(
                    Code::UnknownReference,
                    format!("unknown role `{}`", id.name),
                )
                .label(id.span, "no roles are declared")
                .help(format!(
                    "declare the workflow's roles, e.g. `roles {}`",
                    id.name
                )),
            );
            return false;
        }
        unknown(
            diags,
            id,
            "role",
            self.role_names.iter().map(String::as_str),
        );
        false
    }
}

/// An unknown-name error: a did-you-mean suggestion, else the declared names when
/// there are few.
fn unknown<'a>(
    diags: &mut Vec<Diagnostic>,
    id: &Ident,
    kind: &str,
    candidates: impl Iterator<Item = &'a str> + Clone,
) {
    let mut d = Diagnostic::error(
        Code::UnknownReference,
        format!("unknown {kind} `{}`", id.name),
    )
    .label(id.span, format!("no {kind} has this name"));
    if let Some(s) = did_you_mean(&id.name, candidates.clone()) {
        d = d.help(format!("did you mean `{s}`?"));
    } else {
        let mut all: Vec<&str> = candidates.collect();
        all.sort_unstable();
        if all.is_empty() {
            d = d.help(format!("no {kind} is declared"));
        } else if all.len() <= 8 {
            d = d.help(format!("declared: {}", all.join(", ")));
        }
    }
    diags.push(d);
}

#[cfg(test)]
mod tests {
    use crate::diagnostic::did_you_mean;

    #[test]
    fn suggestions() {
        let c = ["CASE_WORKER", "SUPERVISOR", "ADMIN"];
        assert_eq!(
            did_you_mean("CASE_WORKR", c.iter().copied()),
            Some("CASE_WORKER")
        );
        assert_eq!(did_you_mean("admin", c.iter().copied()), Some("ADMIN"));
        assert_eq!(did_you_mean("NOBODY", c.iter().copied()), None);
    }
}
