//! Rows from a producer thread: how a database source hands its rows to the pipeline.
//!
//! A database driver's row iterator borrows its connection and statement, so it cannot live in
//! the source the pipeline pulls from; a thread owns them and sends rows in batches over a
//! bounded channel instead. Memory is bounded by [`DEPTH`] batches, decoding overlaps with
//! masking and writing, and dropping the receiving side stops the producer at its next send.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::row::Row;
use super::value_kind::Kind;

/// Batches in flight.
pub(super) const DEPTH: usize = 4;

/// One row with the kinds of its fields.
pub(super) type TypedRow = (Row, Vec<Kind>);

/// A message from the producer.
pub(super) enum Message<E> {
    /// The query is running: its columns.
    Started(Vec<String>),
    Rows(Vec<TypedRow>),
    Failed(E),
}

/// The channel a producer sends on.
pub(super) type Sender<E> = SyncSender<Message<E>>;

/// The receiving side: rows one at a time, in the order the producer sent them.
pub(super) struct Batches<E> {
    rows: Receiver<Message<E>>,
    batch: std::vec::IntoIter<TypedRow>,
    kinds: Vec<Kind>,
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
        let producer = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || produce(tx))
            .map_err(thread_error)?;
        let batches = Batches {
            rows,
            batch: Vec::new().into_iter(),
            kinds: Vec::new(),
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
        &self.kinds
    }

    /// Moves the next row into `row`; `false` at the end.
    pub(super) fn next_row(&mut self, row: &mut Row) -> Result<bool, E> {
        loop {
            if let Some((next, kinds)) = self.batch.next() {
                *row = next;
                self.kinds = kinds;
                return Ok(true);
            }
            if self.done {
                return Ok(false);
            }
            match self.rows.recv() {
                Ok(Message::Rows(batch)) => self.batch = batch.into_iter(),
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
