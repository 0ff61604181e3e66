//! The CSV source: the `csv` crate's dialect, read with a fast path for the common line.
//!
//! The dialect is `csv::Reader`'s defaults: `,` between fields, `"` quoting with `""` for a
//! quote, records ended by `\n`, `\r\n` or `\r`, blank lines skipped, a UTF-8 BOM at the start
//! stripped, and every record as long as the first one (the header).
//!
//! A line without a quote and without an inner `\r` — nearly every line of an export — needs
//! none of CSV's state machine: it is found with `memchr`, split on commas and copied into the
//! row once. Any other line is handed to `csv_core`'s reader from its first byte to the end of
//! its record (a quoted field may span lines), and reading goes on from there. The header
//! always goes through `csv_core`, which strips the BOM exactly as `csv::Reader` does. A
//! property test reads arbitrary input both ways and with `csv::Reader`, and wants the same
//! rows.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use csv_core::ReadRecordResult;

use super::error::{io_err, PipelineError, Result};
use super::row::Row;
use super::source::{open_source, RowSource};
use super::IO_BUFFER;

pub(super) struct CsvSource<R = File> {
    input: R,
    path: PathBuf,
    /// Read ahead; the unread part is `buf[pos..end]`.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
    /// Line (1-based) of `buf[pos]`: the number of `\n` before it, plus one.
    line: u64,
    core: csv_core::Reader,
    /// Field ends from `csv_core`.
    ends: Vec<usize>,
    header: Row,
}

impl CsvSource<File> {
    pub(super) fn open(path: &Path) -> Result<CsvSource> {
        CsvSource::new(open_source(path)?, path)
    }
}

impl<R: Read> CsvSource<R> {
    pub(super) fn new(input: R, path: &Path) -> Result<CsvSource<R>> {
        let mut source = CsvSource {
            input,
            path: path.to_path_buf(),
            buf: vec![0; IO_BUFFER],
            pos: 0,
            end: 0,
            eof: false,
            line: 1,
            core: csv_core::Reader::new(),
            ends: vec![0; 32],
            header: Row::default(),
        };
        // csv_core strips a BOM on its first call if that call sees it whole, and takes a call
        // with nothing after it for the end of the input: give it a byte more.
        while source.end < 4 && !source.eof {
            source.fill()?;
        }
        let mut header = Row::default();
        if source.read_quoted(&mut header)? {
            source.header = header;
        }
        Ok(source)
    }

    /// Reads more input after the unread bytes, moved to the front of the buffer; grows the
    /// buffer when they fill it (a record longer than the buffer).
    fn fill(&mut self) -> Result<()> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match self.input.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&self.path)(e)),
            }
            return Ok(());
        }
    }

    /// The next record into `row`; `false` at the end of the input.
    #[inline]
    fn read_record(&mut self, row: &mut Row) -> Result<bool> {
        loop {
            let unread = &self.buf[self.pos..self.end];
            match scan_line(unread, self.eof, &mut row.fields) {
                Scan::Line { len, next } => {
                    let number = self.line;
                    self.pos += next;
                    self.line += u64::from(unread[next - 1] == b'\n');
                    if len > 0 {
                        row.bytes.clear();
                        row.bytes.extend_from_slice(&unread[..len]);
                        row.line = number;
                        row.csv_plain = true;
                        return Ok(true);
                    }
                    // A blank line: no record.
                }
                Scan::Quoted => return self.read_quoted(row),
                Scan::Incomplete if self.eof => return Ok(false),
                Scan::Incomplete => self.fill()?,
            }
        }
    }

    /// The next record, read with `csv_core` from the current position.
    #[cold]
    fn read_quoted(&mut self, row: &mut Row) -> Result<bool> {
        row.clear();
        row.line = self.line;
        if row.bytes.capacity() < 256 {
            row.bytes.reserve(256);
        }
        // `row.bytes` is the output buffer: zero-filled to its capacity, cut back at the end.
        row.bytes.resize(row.bytes.capacity(), 0);
        let (mut out, mut fields, mut started) = (0, 0, false);
        loop {
            let input = &self.buf[self.pos..self.end];
            let (result, read, written, ended) =
                self.core
                    .read_record(input, &mut row.bytes[out..], &mut self.ends[fields..]);
            // Blank lines before the record (csv_core skips them) are not its line.
            let consumed = &input[..read];
            if !started {
                let blank = consumed
                    .iter()
                    .position(|&b| b != b'\r' && b != b'\n')
                    .unwrap_or(consumed.len());
                row.line += memchr::memchr_iter(b'\n', &consumed[..blank]).count() as u64;
                started = blank < consumed.len();
            }
            self.line += memchr::memchr_iter(b'\n', consumed).count() as u64;
            self.pos += read;
            out += written;
            fields += ended;
            match result {
                // At the end of the input, an empty read tells csv_core so.
                ReadRecordResult::InputEmpty if !self.eof => self.fill()?,
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => row.bytes.resize(row.bytes.len() * 2, 0),
                ReadRecordResult::OutputEndsFull => self.ends.resize(self.ends.len() * 2, 0),
                ReadRecordResult::Record => {
                    row.bytes.truncate(out);
                    let mut start = 0;
                    for &end in &self.ends[..fields] {
                        row.fields.push(start..end);
                        start = end;
                    }
                    row.seal();
                    return Ok(true);
                }
                ReadRecordResult::End => {
                    row.clear();
                    return Ok(false);
                }
            }
        }
    }
}

impl<R: Read> RowSource for CsvSource<R> {
    fn header(&self) -> &Row {
        &self.header
    }

    #[inline]
    fn next_row(&mut self, row: &mut Row) -> Result<bool> {
        if !self.read_record(row)? {
            return Ok(false);
        }
        if row.len() != self.header.len() {
            return Err(PipelineError::Csv {
                path: self.path.clone(),
                line: row.line,
                message: format!(
                    "{} fields where the header has {}",
                    row.len(),
                    self.header.len()
                ),
            });
        }
        Ok(true)
    }
}

/// What [`scan_line`] found at the start of the unread input.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// A line without quotes: `len` bytes of fields (line end excluded), `next` bytes with it.
    Line { len: usize, next: usize },
    /// The line holds a quote or an inner `\r`: for `csv_core`.
    Quoted,
    /// No line end yet (and not at the end of the input), or nothing at all at the end.
    Incomplete,
}

/// Finds the first line of `bytes` and, when it needs no CSV state machine, the ranges of its
/// comma-separated fields (into `fields`, cleared first). 16 bytes a step: one compare per byte
/// value of interest, then one bit per comma.
#[inline]
fn scan_line(bytes: &[u8], at_eof: bool, fields: &mut Vec<Range<usize>>) -> Scan {
    fields.clear();
    let mut start = 0;
    let mut block = 0;
    while block < bytes.len() {
        let (mut commas, stops) = match bytes[block..].first_chunk::<16>() {
            Some(chunk) => classify(chunk),
            None => classify_tail(&bytes[block..]),
        };
        let stop = (stops != 0).then(|| block + stops.trailing_zeros() as usize);
        if let Some(stop) = stop {
            commas &= (1 << (stop - block)) - 1;
        }
        while commas != 0 {
            let comma = block + commas.trailing_zeros() as usize;
            fields.push(start..comma);
            start = comma + 1;
            commas &= commas - 1;
        }
        if let Some(stop) = stop {
            fields.push(start..stop);
            return match (bytes[stop], bytes.get(stop + 1)) {
                (b'\n', _) => Scan::Line {
                    len: stop,
                    next: stop + 1,
                },
                (b'\r', Some(b'\n')) => Scan::Line {
                    len: stop,
                    next: stop + 2,
                },
                (b'\r', None) if at_eof => Scan::Line {
                    len: stop,
                    next: stop + 1,
                },
                (b'\r', None) => Scan::Incomplete,
                _ => Scan::Quoted,
            };
        }
        block += 16;
    }
    if at_eof && !bytes.is_empty() {
        fields.push(start..bytes.len());
        return Scan::Line {
            len: bytes.len(),
            next: bytes.len(),
        };
    }
    Scan::Incomplete
}

/// Bit `i` of the first mask: `block[i]` is a comma; of the second: a line end or a quote.
#[cfg(target_arch = "x86_64")]
#[inline]
fn classify(block: &[u8; 16]) -> (u32, u32) {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline, so these intrinsics are always available;
    // the unaligned load reads exactly the 16 bytes of `block`.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast());
        let eq = |b: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
        let commas = _mm_movemask_epi8(eq(b',')) as u32;
        let stops = _mm_or_si128(_mm_or_si128(eq(b'\n'), eq(b'\r')), eq(b'"'));
        (commas, _mm_movemask_epi8(stops) as u32)
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn classify(block: &[u8; 16]) -> (u32, u32) {
    classify_tail(block)
}

/// [`classify`] a byte at a time, for up to 32 bytes.
fn classify_tail(bytes: &[u8]) -> (u32, u32) {
    let (mut commas, mut stops) = (0, 0);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b',' => commas |= 1 << i,
            b'\n' | b'\r' | b'"' => stops |= 1 << i,
            _ => {}
        }
    }
    (commas, stops)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::super::row::Row;
    use super::super::source::RowSource;
    use super::super::PipelineError;
    use super::CsvSource;
    use crate::masking::MaskMethod;
    use crate::pipeline::fixture::{cases_csv, masks, run_collect, run_ok, Fixture, HEADER};
    use crate::pipeline::DataFormat;

    /// Reads `input` in reads of at most `step` bytes (buffer boundaries anywhere).
    struct Trickle<'a> {
        input: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input = &self.input[n..];
            Ok(n)
        }
    }

    /// What we read: the header, the rows, and the error's (line, message) if one stopped us.
    type Read = (Vec<Vec<u8>>, Vec<Vec<Vec<u8>>>, Option<(u64, String)>);

    fn ours(input: &[u8], step: usize) -> Read {
        let path = Path::new("t.csv");
        let mut source = CsvSource::new(Trickle { input, step }, path).expect("in-memory read");
        let header = source.header().iter().map(<[u8]>::to_vec).collect();
        let mut rows = Vec::new();
        let mut row = Row::default();
        loop {
            match source.next_row(&mut row) {
                Ok(true) => {
                    assert_eq!(
                        row.csv_plain,
                        !super::super::byte_scan::needs_csv_quotes(
                            &row.iter().collect::<Vec<_>>().concat()
                        ),
                        "csv_plain of {row:?}"
                    );
                    rows.push(row.iter().map(<[u8]>::to_vec).collect())
                }
                Ok(false) => return (header, rows, None),
                Err(PipelineError::Csv { line, message, .. }) => {
                    return (header, rows, Some((line, message)))
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    }

    fn theirs(input: &[u8]) -> Read {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(input);
        let header = reader
            .byte_headers()
            .expect("in-memory read")
            .iter()
            .map(<[u8]>::to_vec)
            .collect();
        let mut rows = Vec::new();
        let mut record = csv::ByteRecord::new();
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(true) => rows.push(record.iter().map(<[u8]>::to_vec).collect()),
                Ok(false) => return (header, rows, None),
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    return (header, rows, Some((line, e.to_string())));
                }
            }
        }
    }

    fn same_as_the_csv_crate(input: &[u8], step: usize) {
        let (header, rows, error) = ours(input, step);
        let (their_header, their_rows, their_error) = theirs(input);
        assert_eq!(header, their_header, "header of {input:?}");
        assert_eq!(rows, their_rows, "rows of {input:?}");
        assert_eq!(
            error.is_some(),
            their_error.is_some(),
            "errors of {input:?}: {error:?} / {their_error:?}"
        );
    }

    #[test]
    fn reads_what_the_csv_crate_reads() {
        for input in [
            &b""[..],
            b"\n\n",
            b"\xef\xbb\xbfa,b\n1,2\n",
            b"\xef\xbb\xbf\xef\xbb\xbfa\n1\n",
            b"a,b\r\n1,2\r\n\r\n3,4",
            b"a,b\r1,2\r3,4\r",
            b"a,b\n1,\"x\ny\"\n\"q\"\"q\",\n",
            b"a,b\n1,2,3\n",
            b"a,b\n1\n",
            b"a\n\"\"\n\n,\n",
            b"a,b\nx\"y,z\n",
            b"a,b\n\"unterminated,\n",
            b"\"a\r\"\r\n1\r",
            b",\n,\n",
        ] {
            for step in [1, 2, 3, 7, 1 << 20] {
                same_as_the_csv_crate(input, step);
            }
        }
    }

    #[test]
    fn a_short_row_is_an_error_at_its_line() {
        let (_, rows, error) = ours(b"a,b\n1,2\n\n\"3\n\",4\n5\n", 1 << 20);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            error,
            Some((6, "1 fields where the header has 2".to_string()))
        );
        let (_, _, error) = ours(b"a,b\n1,2\n\"x\ny\"\n", 4);
        assert_eq!(
            error,
            Some((3, "1 fields where the header has 2".to_string()))
        );
    }

    #[test]
    fn lines_longer_than_the_buffer() {
        let long = "x".repeat(3 * super::IO_BUFFER);
        let input = format!("a,b\n{long},\"{long}\"\n1,2\n");
        same_as_the_csv_crate(input.as_bytes(), 1 << 20);
        let (_, rows, _) = ours(input.as_bytes(), 1 << 20);
        assert_eq!(rows.len(), 2);
    }

    fn csv_text() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            4 => Just(b"a".to_vec()),
            2 => Just(b"bc".to_vec()),
            3 => Just(b",".to_vec()),
            2 => Just(b"\"".to_vec()),
            2 => Just(b"\n".to_vec()),
            1 => Just(b"\r".to_vec()),
            1 => Just(b"\r\n".to_vec()),
            1 => Just(b" ".to_vec()),
            1 => Just("é".as_bytes().to_vec()),
            1 => Just(b"\xef\xbb\xbf".to_vec()),
            1 => Just(b"\xff".to_vec()),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn classify_matches_the_bytewise_scan(block in prop::array::uniform16(
            prop_oneof![Just(b','), Just(b'\n'), Just(b'\r'), Just(b'"'), any::<u8>()]
        )) {
            prop_assert_eq!(super::classify(&block), super::classify_tail(&block));
        }

        #[test]
        fn fast_path_reads_like_the_csv_crate(input in csv_text(), step in 1usize..9) {
            same_as_the_csv_crate(&input, step);
            same_as_the_csv_crate(&input, 1 << 20);
        }

        #[test]
        fn well_formed_files_read_like_the_csv_crate(
            rows in prop::collection::vec(prop::collection::vec("[a-z,\"\r\n ]{0,6}", 3), 1..12),
        ) {
            let mut writer = csv::Writer::from_writer(Vec::new());
            for row in &rows {
                writer.write_record(row).expect("in-memory write");
            }
            let text = writer.into_inner().expect("in-memory write");
            let (header, read, error) = ours(&text, 5);
            prop_assert_eq!(error, None);
            let mut all = vec![header];
            all.extend(read);
            let want: Vec<Vec<Vec<u8>>> = rows
                .iter()
                .map(|row| row.iter().map(|f| f.as_bytes().to_vec()).collect())
                .collect();
            prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn malformed_csv_row_mid_file_names_file_and_line() {
        let fx = Fixture::new();
        let mut data = cases_csv(20);
        data.push_str("C99999,12,short row\n");
        data.push_str(&cases_csv(5)[HEADER.len() + 1..]);
        let src = fx.source("bad.csv", data);
        for output in [DataFormat::Csv, DataFormat::Jsonl] {
            let mut spec = fx.spec(&src, DataFormat::Csv, output);
            spec.chunk_size = 3;
            let (result, seen) = run_collect(&spec);
            let err = result.unwrap_err();
            match &err {
                PipelineError::Csv {
                    path,
                    line,
                    message,
                } => {
                    assert_eq!(path, &src);
                    assert_eq!(
                        *line, 22,
                        "header is line 1, 20 good rows, then the bad one"
                    );
                    assert!(message.contains("3 fields"), "{message}");
                }
                other => panic!("expected a CSV error, got {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains("bad.csv:22"), "{msg}");
            assert_eq!(seen.len(), 6, "the chunks before the bad row were done");
            assert!(fx.result_files().is_empty(), "{:?}", fx.result_files());
        }
    }

    #[test]
    fn malformed_csv_with_quoted_newlines_reports_the_starting_line() {
        let fx = Fixture::new();
        let src = fx.source("bad.csv", "a,b\n1,\"x\ny\"\n2,3,4\n");
        let err = run_collect(&fx.spec(&src, DataFormat::Csv, DataFormat::Csv))
            .0
            .unwrap_err();
        assert!(matches!(err, PipelineError::Csv { line: 4, .. }), "{err:?}");
    }

    #[test]
    fn bom_is_stripped_so_first_column_masks_apply() {
        let fx = Fixture::new();
        let src = fx.source("bom.csv", "\u{feff}ssn,x\n123456789,1\n");
        let mut spec = fx.spec(&src, DataFormat::Csv, DataFormat::Csv);
        spec.masks = masks(&[("ssn", MaskMethod::Redact)]);
        assert_eq!(run_ok(&spec).1, "ssn,x\n****,1\n");
    }
}
