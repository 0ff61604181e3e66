//! A 1M-row database query streams with flat memory: a counting allocator (this test binary's
//! global allocator) records the peak of live heap bytes while `pipeline::run` reads one
//! million rows (about 70 MB of CSV) from SQLite, and from PostgreSQL when `FLOWCTL_TEST_PG`
//! is set, and the peak above the start must stay under a generous bound, far below the
//! result's size. One test in its own binary, so no other test's allocations count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use flowctl::masking::MaskMethod;
use flowctl::pipeline::{self, Bindings, Control, DataFormat, PipelineSpec, Progress, SourceSpec};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const ROWS: u64 = 1_000_000;
/// Far below the ~70 MB the rows would take if they were held: batches in flight, buffers.
const BOUND: usize = 24 << 20;

/// Runs `source` into a CSV result and returns (rows written, result bytes, peak heap growth).
fn measure(source: SourceSpec, dir: &std::path::Path, name: &str) -> (u64, u64, usize) {
    let spec = PipelineSpec {
        source,
        county_column: Some("county_id".into()),
        county: Some("C1".into()),
        output_format: DataFormat::Csv,
        chunk_size: 1000,
        masks: vec![("ssn".into(), MaskMethod::Last4)],
        mask_columns: vec!["ssn".into()],
        hash_key: [1; 32],
        result_path: dir.join(format!("{name}.csv")),
        rows_total: None,
    };
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = pipeline::run(&spec, &mut |_: &Progress| Control::Continue).unwrap();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(start);
    (out.rows_written, out.bytes, peak)
}

const QUERY_SQLITE: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) \
     SELECT i AS case_id, 'C1' AS county_id, printf('%09d', i) AS ssn, 'Client ' || i AS client_name, \
            i * 1.25 AS amount, '2026-11-30' AS opened_on FROM n";

const QUERY_PG: &str = "SELECT i AS case_id, 'C1' AS county_id, lpad(i::text, 9, '0') AS ssn, \
     'Client ' || i AS client_name, (i * 1.25)::numeric(12,2) AS amount, DATE '2026-11-30' AS opened_on \
     FROM generate_series(1, 1000000) AS i";

#[test]
fn a_million_row_query_streams_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("empty.sqlite");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let (rows, bytes, peak) = measure(
        SourceSpec::Sqlite {
            path: db,
            query: QUERY_SQLITE.into(),
            bindings: Bindings::new(),
        },
        dir.path(),
        "sqlite",
    );
    assert_eq!(rows, ROWS);
    assert!(bytes > 50 << 20, "{bytes}");
    println!("sqlite: {rows} rows, {bytes} bytes of CSV, heap peak +{peak} bytes");
    assert!(peak < BOUND, "SQLite: heap grew by {peak} bytes");

    let Some(url) = flowctl::store::pg_test_schema::database_url() else {
        println!("skipped PostgreSQL: FLOWCTL_TEST_PG not set");
        return;
    };
    let (rows, bytes, peak) = measure(
        SourceSpec::Postgres {
            url,
            query: QUERY_PG.into(),
            bindings: Bindings::new(),
            application_name: "flowctl memory test".into(),
        },
        dir.path(),
        "postgres",
    );
    assert_eq!(rows, ROWS);
    println!("postgres: {rows} rows, {bytes} bytes of CSV, heap peak +{peak} bytes");
    assert!(peak < BOUND, "PostgreSQL: heap grew by {peak} bytes");
}
