//! One source row as the pipeline carries it from a source to a sink.

use std::ops::Range;

use super::byte_scan::needs_csv_quotes;

/// A row: the bytes its fields were cut from, where each field lies in them, the line it
/// started on, and whether some field holds a byte that CSV output must quote.
///
/// A CSV line read on the fast path keeps its bytes as they were (fields separated by commas):
/// one copy, and `csv_plain` is known without a scan. Other producers store the fields back to
/// back and call [`Row::seal`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) bytes: Vec<u8>,
    pub(super) fields: Vec<Range<usize>>,
    /// Line (1-based) of the source where the row starts (0 when unknown).
    pub(super) line: u64,
    /// No field holds a delimiter, quote or line break: CSV output needs no quoting.
    pub(super) csv_plain: bool,
}

impl Row {
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
        self.csv_plain = false;
    }

    /// Appends a field; call [`Row::seal`] after the last one.
    pub(super) fn push_field(&mut self, field: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(field);
        self.fields.push(start..self.bytes.len());
    }

    /// Settles `csv_plain` for fields pushed back to back.
    pub(super) fn seal(&mut self) {
        self.csv_plain = !needs_csv_quotes(&self.bytes);
    }

    pub(super) fn len(&self) -> usize {
        self.fields.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    #[inline]
    pub(super) fn get(&self, index: usize) -> Option<&[u8]> {
        self.fields
            .get(index)
            .map(|range| &self.bytes[range.clone()])
    }

    #[inline]
    pub(super) fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.fields.iter().map(|range| &self.bytes[range.clone()])
    }

    /// Every byte of the fields, perhaps with commas between them: enough to ask whether any
    /// field holds a byte that needs escaping in JSON.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<T: AsRef<[u8]>> FromIterator<T> for Row {
    fn from_iter<I: IntoIterator<Item = T>>(fields: I) -> Row {
        let mut row = Row::default();
        for field in fields {
            row.push_field(field.as_ref());
        }
        row.seal();
        row
    }
}
