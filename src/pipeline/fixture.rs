//! Test helpers shared by the pipeline's unit tests: a temporary directory with sources and
//! a results directory, a spec over them, runs that collect progress, and readers of results.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub(super) use crate::masking::mask_str;
use crate::masking::MaskMethod;

use super::error::Result;
use super::{run, Control, DataFormat, Output, PipelineSpec, Progress, SourceSpec};

/// The `hash` masking key of every spec.
pub(super) const KEY: [u8; 32] = [3u8; 32];
/// The header of [`cases_csv`].
pub(super) const HEADER: &str =
    "case_id,county_id,client_name,ssn,date_of_birth,case_status,opened_on,benefit_amount";

/// Case row `i` in `county`.
fn case_row(i: usize, county: &str) -> String {
    format!(
        "C{i:05},{county},Client {i},123-45-{:04},1980-01-{:02},OPEN,2024-03-01,{}.50",
        i % 10000,
        i % 28 + 1,
        i * 10
    )
}

/// A cases CSV: the header and `n` rows, every third in county 12, the others in 7.
pub(super) fn cases_csv(n: usize) -> String {
    let mut s = format!("{HEADER}\n");
    for i in 0..n {
        s.push_str(&case_row(i, if i % 3 == 0 { "12" } else { "7" }));
        s.push('\n');
    }
    s
}

/// A temporary directory for sources and results, removed on drop.
pub(super) struct Fixture {
    pub(super) dir: TempDir,
}

impl Fixture {
    pub(super) fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes a source file named `name`.
    pub(super) fn source(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, content).unwrap();
        path
    }

    /// Where the results of the report are.
    pub(super) fn results_dir(&self) -> PathBuf {
        self.dir.path().join("results").join("DAILY_REPORT")
    }

    /// A spec that reads `source` (county column `county_id`, no filter, no masks) into the
    /// job's result in `output`.
    pub(super) fn spec(
        &self,
        source: &Path,
        input: DataFormat,
        output: DataFormat,
    ) -> PipelineSpec {
        PipelineSpec {
            source: SourceSpec::File {
                path: source.to_path_buf(),
                format: input,
            },
            county_column: Some("county_id".into()),
            county: None,
            output_format: output,
            chunk_size: 1000,
            masks: Vec::new(),
            mask_columns: Vec::new(),
            hash_key: KEY,
            rows_total: None,
            result_path: self
                .results_dir()
                .join(format!("JOB_ABCD1234.{}", output.extension())),
        }
    }

    /// Names of the files in the results directory (temp files included).
    pub(super) fn result_files(&self) -> Vec<String> {
        match fs::read_dir(self.results_dir()) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            }
            Err(_) => Vec::new(),
        }
    }
}

/// One run as a new attempt would make it: the executor gives every attempt its own
/// result path, so a result left by an earlier run of the same test is removed first.
pub(super) fn run_collect(spec: &PipelineSpec) -> (Result<Output>, Vec<Progress>) {
    let _ = fs::remove_file(&spec.result_path);
    let mut seen = Vec::new();
    let result = run(spec, &mut |p: &Progress| {
        seen.push(*p);
        Control::Continue
    });
    (result, seen)
}

/// A run that must succeed: its output, the result's text and the progress seen.
pub(super) fn run_ok(spec: &PipelineSpec) -> (Output, String, Vec<Progress>) {
    let (result, seen) = run_collect(spec);
    let out = result.unwrap();
    let text = fs::read_to_string(&out.path).unwrap();
    (out, text, seen)
}

/// Mask rules from `(field, method)` pairs.
pub(super) fn masks(pairs: &[(&str, MaskMethod)]) -> Vec<(String, MaskMethod)> {
    pairs.iter().map(|&(f, m)| (f.to_string(), m)).collect()
}

/// A CSV text's records, header included.
pub(super) fn read_csv(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

/// Parses JSON lines into (key, value) lists, keeping key order.
pub(super) fn read_jsonl(text: &str) -> Vec<Vec<(String, serde_json::Value)>> {
    text.lines()
        .map(|line| {
            // serde_json's Map is sorted; recover the order from the text itself.
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let obj = v.as_object().unwrap();
            let mut keys: Vec<(usize, String)> = obj
                .keys()
                .map(|k| {
                    let needle = format!("{}:", serde_json::to_string(k).unwrap());
                    (line.find(&needle).unwrap(), k.clone())
                })
                .collect();
            keys.sort();
            keys.into_iter()
                .map(|(_, k)| (k.clone(), obj[&k].clone()))
                .collect()
        })
        .collect()
}

/// Lowercase hex SHA-256.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A CSV field value: plain, full of special bytes, or any string without NUL.
pub(super) fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 ]{0,12}",
        "[,\"\n\r a-zé日😀\\\\]{0,12}",
        any::<String>().prop_map(|s| s.chars().filter(|&c| c != '\0').take(16).collect()),
    ]
}
