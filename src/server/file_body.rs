//! Streaming a result file as a response body.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use tokio::io::AsyncRead;

/// Size of one chunk of a streamed result file.
const FILE_CHUNK: usize = 64 * 1024;

/// A file streamed as a response body in [`FILE_CHUNK`]s, never read whole into memory.
pub(super) struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
}

impl FileBody {
    /// Streams the first `len` bytes of `file` (its length when opened); a file that turns
    /// out shorter ends the body with an error.
    pub(super) fn new(file: tokio::fs::File, len: u64) -> FileBody {
        FileBody {
            file,
            remaining: len,
            buf: Vec::new(),
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(FILE_CHUNK as u64) as usize;
        if this.buf.len() != want {
            this.buf = vec![0; want];
        }
        let mut read = tokio::io::ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "result file shorter than announced",
                    ))));
                }
                let mut chunk = std::mem::take(&mut this.buf);
                chunk.truncate(n);
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(chunk)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}
