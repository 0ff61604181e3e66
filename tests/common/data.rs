//! Generated CSV sources, deterministic: the same rows for the same arguments, so a test's
//! input never changes between runs.

use std::fmt::Write;

/// `rows` fake case records with the bundled data's eight columns (`case_id`, `county_id` in
/// C01..C06, `client_name`, `ssn`, `date_of_birth`, `case_status`, `opened_on`,
/// `benefit_amount`), from a fixed xorshift sequence.
pub fn cases(rows: usize) -> String {
    let mut out = String::from(
        "case_id,county_id,client_name,ssn,date_of_birth,case_status,opened_on,benefit_amount\n",
    );
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 1..=rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        writeln!(
            out,
            "CASE-{i:07},C0{},Fake Person {},9{:02}-{:02}-{:04},19{:02}-0{}-1{},OPEN,2020-01-01,{}.{:02}",
            x % 6 + 1,
            x % 997,
            x % 100,
            (x >> 8) % 100,
            (x >> 16) % 10000,
            (x >> 24) % 100,
            (x >> 32) % 9 + 1,
            (x >> 36) % 9,
            (x >> 40) % 5000,
            (x >> 48) % 100,
        )
        .unwrap();
    }
    out
}

/// `rows` fake case records of four columns (`case_id`, `county_id` in C01..C06,
/// `client_name`, `ssn`), counting up.
pub fn short_cases(rows: usize) -> String {
    let mut out = String::from("case_id,county_id,client_name,ssn\n");
    for i in 0..rows {
        writeln!(
            out,
            "CASE-{i:07},C0{},Fake Person {},900-{:02}-{:04}",
            i % 6 + 1,
            i % 97,
            i % 100,
            i % 10_000
        )
        .unwrap();
    }
    out
}

/// `rows` rows of `id,county_id,amount` (counties c0..c6) whose amounts depend on `salt`: two
/// salts give two versions of a source, and two results.
pub fn amounts(rows: usize, salt: usize) -> String {
    let mut csv = String::from("id,county_id,amount\n");
    for i in 0..rows {
        writeln!(csv, "{i},c{},{}", i % 7, i * 3 + salt).unwrap();
    }
    csv
}
