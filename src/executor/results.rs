//! Result files: the name of each attempt's result, and the results an attempt that lost its
//! job leaves behind.

use std::path::PathBuf;

use crate::job::{Job, JobId};
use crate::workflow::DataFormat;

/// The result file of one attempt: `<job_id>.<ext>` for the first, `<job_id>.attempt-N.<ext>`
/// after, in `<results>/<REPORT>/` or, for a job with a window, `<results>/<REPORT>/<label>/`
/// (`Window::label`: `2026-11-30`, `2026-W48`, `2026-11`, …; the pipeline creates it and syncs
/// its parent). Each attempt writes its own path and the pipeline never replaces a file, so a worker
/// that lost its lease (paused past it, then resumed) cannot put its output over the result a
/// later attempt completed: the recorded path and SHA-256 always match the file.
pub fn result_file_name(job_id: &JobId, attempt: u32, format: DataFormat) -> String {
    match attempt {
        0 | 1 => format!("{job_id}.{}", format.extension()),
        n => format!("{job_id}.attempt-{n}.{}", format.extension()),
    }
}

/// The result paths of `job`'s attempts up to its current one, beside `result_path`: what
/// holders that are gone may have left. The current attempt's own path is among them because
/// a claim of the embedded store may be lost in a crash (claims are written lazily), so the
/// same attempt number can run again after a restart; its earlier holder was the process
/// that died, since one process holds an embedded store. A shared store's claims are durable,
/// so there an attempt number has one holder and its path is free.
pub(super) fn leftover_results(
    job: &Job,
    result_path: &std::path::Path,
    format: DataFormat,
) -> Vec<PathBuf> {
    let dir = result_path.parent().unwrap_or(std::path::Path::new("."));
    (1..=job.attempt.max(1))
        .map(|attempt| dir.join(result_file_name(&job.job_id, attempt, format)))
        .collect()
}

/// Removes a result written by an attempt that no longer holds its job.
pub(super) fn discard_result(job_id: &JobId, path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(job = %job_id, path = %path.display(), "removed the result of an attempt that lost its job")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(job = %job_id, path = %path.display(), error = %e, "cannot remove the result of an attempt that lost its job")
        }
    }
}

impl super::Engine {
    /// Removes what the attempts of jobs that recovery ended (FAILED with no attempt left, or
    /// CANCELLED) may have left at their result paths: a worker that died after its result was
    /// linked into place and before its completion was recorded (the durability stage's window)
    /// leaves a file that no record names, and no later attempt will come to remove it.
    pub fn discard_unrecorded_results(&self, finished: &[crate::store::Completion]) {
        for completion in finished {
            let job = &completion.job;
            if job.status == crate::job::JobStatus::Completed {
                continue;
            }
            match self.spec_for(job) {
                Ok((spec, _)) => {
                    for path in leftover_results(job, &spec.result_path, spec.output_format) {
                        discard_result(&job.job_id, &path);
                    }
                }
                Err(why) => {
                    tracing::debug!(job = %job.job_id, %why, "no result paths to look at");
                }
            }
        }
    }
}
