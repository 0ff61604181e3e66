//! Placeholder until the pipeline module lands; replaced by the real masking module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MaskMethod {
    Redact,
    Last4,
    Hash,
    Null,
}
impl MaskMethod {
    pub const NAMES: [&'static str; 4] = ["redact", "last4", "hash", "null"];
    pub fn from_name(s: &str) -> Option<MaskMethod> {
        match s {
            "redact" => Some(MaskMethod::Redact),
            "last4" => Some(MaskMethod::Last4),
            "hash" => Some(MaskMethod::Hash),
            "null" => Some(MaskMethod::Null),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            MaskMethod::Redact => "redact",
            MaskMethod::Last4 => "last4",
            MaskMethod::Hash => "hash",
            MaskMethod::Null => "null",
        }
    }
}
