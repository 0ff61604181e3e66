//! Rows from a producer thread: how a database source hands its rows to the pipeline.
//!
//! A database driver's row iterator borrows its connection and statement, so it cannot live in
//! the source the pipeline pulls from; a thread owns them and sends rows in batches over a
//! bounded channel instead. Memory is bounded by [`DEPTH`] batches, decoding overlaps with
//! masking and writing, and dropping the receiving side stops the producer at its next send.
//!
//! A [`Batch`] keeps its rows back to back in three flat buffers (the fields' bytes, where each
//! field ends, each field's [`Kind`]), and the consumer sends every batch it has read back to
//! the producer to fill again: after the first few batches no row costs an allocation on
//! either side, and the consumer copies a row's bytes once, into the row it is given.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::row::Row;
use super::value_kind::Kind;

/// Batches in flight.
pub(super) const DEPTH: usize = 4;

/// Rows of a fixed number of columns, back to back.
#[derive(Debug, Default)]
pub(super) struct Batch {
    bytes: Vec<u8>,
    /// End of each field in `bytes` (the start is the previous field's end).
    ends: Vec<usize>,
    kinds: Vec<Kind>,
    columns: usize,
}

impl Batch {
    /// Empties the batch for rows of `columns` fields.
    pub(super) fn reset(&mut self, columns: usize) {
        self.bytes.clear();
        self.ends.clear();
        self.kinds.clear();
        self.columns = columns;
    }

    /// Rows in the batch (whole ones).
    pub(super) fn rows(&self) -> usize {
        self.ends.len().checked_div(self.columns).unwrap_or(0)
    }

    /// Where a field's bytes go: append them to this buffer, then call [`Batch::end_field`].
    #[inline]
    pub(super) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Ends the field whose bytes were appended to [`Batch::buf`] since the last one.
    #[inline]
    pub(super) fn end_field(&mut self, kind: Kind) {
        self.ends.push(self.bytes.len());
        self.kinds.push(kind);
    }

    /// Appends a whole field.
    #[inline]
    #[cfg(test)]
    pub(super) fn push(&mut self, bytes: &[u8], kind: Kind) {
        self.bytes.extend_from_slice(bytes);
        self.end_field(kind);
    }

    /// Every field so far, with its kind.
    #[cfg(test)]
    pub(super) fn fields(&self) -> impl Iterator<Item = (&[u8], Kind)> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .zip(self.kinds.iter().copied())
            .map(|((start, end), kind)| (&self.bytes[start..end], kind))
    }

    /// Bytes held, to cut batches of wide rows early.
    pub(super) fn byte_len(&self) -> usize {
        self.bytes.len()
    }
}

/// A message from the producer.
pub(super) enum Message<E> {
    /// The query is running: its columns.
    Started(Vec<String>),
    Rows(Batch),
    Failed(E),
}

/// What a producer holds: the channel it sends on and the batches that come back.
pub(super) struct Sender<E> {
    tx: SyncSender<Message<E>>,
    recycled: Receiver<Batch>,
    columns: usize,
}

impl<E> Sender<E> {
    /// Says the query runs, with its columns; `false` when the reader left.
    pub(super) fn started(&mut self, columns: Vec<String>) -> bool {
        self.columns = columns.len();
        self.tx.send(Message::Started(columns)).is_ok()
    }

    /// An empty batch to fill: one the reader sent back, or a new one.
    pub(super) fn batch(&self) -> Batch {
        // None waiting (or the reader is gone): a new one.
        let mut batch = self.recycled.try_recv().unwrap_or_default();
        batch.reset(self.columns);
        batch
    }

    /// Sends a batch of rows (nothing for an empty one); `false` when the reader left.
    pub(super) fn send(&self, batch: Batch) -> bool {
        batch.rows() == 0 || self.tx.send(Message::Rows(batch)).is_ok()
    }

    /// Reports the error that ended the query.
    pub(super) fn fail(&self, error: E) {
        let _ = self.tx.send(Message::Failed(error));
    }
}

/// The receiving side: rows one at a time, in the order the producer sent them.
pub(super) struct Batches<E> {
    rows: Receiver<Message<E>>,
    recycle: SyncSender<Batch>,
    batch: Batch,
    /// Next row of `batch` to hand out.
    next: usize,
    /// Where the kinds of the row handed out last start in `batch.kinds`.
    current: Option<usize>,
    /// Rows handed out so far (a row's number is its `line`, for errors).
    handed: u64,
    producer: Option<JoinHandle<()>>,
    done: bool,
}

impl<E: Send + 'static> Batches<E> {
    /// Starts `produce` on a thread named `name`, and waits for its first message: the columns,
    /// or the error that kept the query from starting.
    pub(super) fn start(
        name: &str,
        produce: impl FnOnce(Sender<E>) + Send + 'static,
        thread_error: impl FnOnce(std::io::Error) -> E,
        stopped: impl FnOnce() -> E,
    ) -> Result<(Vec<String>, Batches<E>), E> {
        let (tx, rows) = sync_channel(DEPTH);
        let (recycle, recycled) = sync_channel(DEPTH + 2);
        let sender = Sender {
            tx,
            recycled,
            columns: 0,
        };
        let producer = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || produce(sender))
            .map_err(thread_error)?;
        let batches = Batches {
            rows,
            recycle,
            batch: Batch::default(),
            next: 0,
            current: None,
            handed: 0,
            producer: Some(producer),
            done: false,
        };
        match batches.rows.recv() {
            Ok(Message::Started(columns)) => Ok((columns, batches)),
            Ok(Message::Failed(e)) => Err(e),
            Ok(Message::Rows(_)) | Err(_) => Err(stopped()),
        }
    }

    /// The kinds of the fields of the row [`Batches::next_row`] returned last.
    pub(super) fn kinds(&self) -> &[Kind] {
        match self.current {
            Some(start) => &self.batch.kinds[start..start + self.batch.columns],
            None => &[],
        }
    }

    /// Copies the next row into `row` (its buffers are reused); `false` at the end.
    pub(super) fn next_row(&mut self, row: &mut Row) -> Result<bool, E> {
        loop {
            if self.next < self.batch.rows() {
                let columns = self.batch.columns;
                let first = self.next * columns;
                let start = if first == 0 {
                    0
                } else {
                    self.batch.ends[first - 1]
                };
                let end = self.batch.ends[first + columns - 1];
                row.clear();
                row.bytes.extend_from_slice(&self.batch.bytes[start..end]);
                let mut from = 0;
                for &field_end in &self.batch.ends[first..first + columns] {
                    let to = field_end - start;
                    row.fields.push(from..to);
                    from = to;
                }
                self.handed += 1;
                row.line = self.handed;
                row.seal();
                self.current = Some(first);
                self.next += 1;
                return Ok(true);
            }
            self.current = None;
            if self.done {
                return Ok(false);
            }
            match self.rows.recv() {
                Ok(Message::Rows(batch)) => {
                    let read = std::mem::replace(&mut self.batch, batch);
                    // The producer may be gone or have enough spares: then it is dropped.
                    let _ = self.recycle.try_send(read);
                    self.next = 0;
                }
                Ok(Message::Failed(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The producer finished and closed the channel.
                Ok(Message::Started(_)) | Err(_) => self.done = true,
            }
        }
    }
}

impl<E> Drop for Batches<E> {
    fn drop(&mut self) {
        // The producer's next send fails once the receiver is gone.
        let rows = std::mem::replace(&mut self.rows, sync_channel(1).1);
        drop(rows);
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }
}

/// Test support: every row a source gives, as text fields with their kinds.
#[cfg(test)]
pub(super) fn collect<E: std::fmt::Debug + Send + 'static>(
    rows: &mut Batches<E>,
) -> Vec<(Vec<String>, Vec<Kind>)> {
    let mut out = Vec::new();
    let mut row = Row::default();
    while rows.next_row(&mut row).unwrap() {
        let fields = row
            .iter()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect();
        out.push((fields, rows.kinds().to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_cross_batches_in_order_and_batches_are_reused() {
        let (columns, mut rows) = Batches::<String>::start(
            "test-producer",
            |mut tx| {
                if !tx.started(vec!["n".into(), "text".into()]) {
                    return;
                }
                let mut fresh = 0;
                for b in 0..50 {
                    let batch = tx.batch();
                    if batch.bytes.capacity() == 0 {
                        fresh += 1;
                    }
                    let mut batch = batch;
                    for i in 0..10 {
                        let n = (b * 10 + i).to_string();
                        batch.push(n.as_bytes(), Kind::Integer);
                        batch.push(b"a,\"b\"", Kind::Text);
                    }
                    if !tx.send(batch) {
                        return;
                    }
                }
                // Far fewer batches were made than sent: the reader gives them back.
                assert!(fresh <= DEPTH + 4, "{fresh} batches allocated");
            },
            |e| e.to_string(),
            || "stopped".to_string(),
        )
        .unwrap();
        assert_eq!(columns, ["n", "text"]);
        let all = collect(&mut rows);
        assert_eq!(all.len(), 500);
        for (i, (fields, kinds)) in all.iter().enumerate() {
            assert_eq!(fields, &[i.to_string(), "a,\"b\"".to_string()]);
            assert_eq!(kinds, &[Kind::Integer, Kind::Text]);
        }
        let mut row = Row::default();
        assert!(!rows.next_row(&mut row).unwrap());
        assert!(rows.kinds().is_empty());
    }

    #[test]
    fn an_error_after_rows_comes_after_them() {
        let (_, mut rows) = Batches::<String>::start(
            "test-producer",
            |mut tx| {
                tx.started(vec!["n".into()]);
                let mut batch = tx.batch();
                batch.push(b"1", Kind::Integer);
                tx.send(batch);
                tx.fail("lost".into());
            },
            |e| e.to_string(),
            || "stopped".to_string(),
        )
        .unwrap();
        let mut row = Row::default();
        assert!(rows.next_row(&mut row).unwrap());
        assert_eq!(row.get(0), Some(&b"1"[..]));
        assert_eq!(rows.next_row(&mut row).unwrap_err(), "lost");
    }
}
