//! The request-head guard: every oversized request head gets the API's JSON `431`.
//!
//! hyper refuses a head over its `max_header_size`, or with more header fields than its
//! `max_headers`, with a bare `431` (no body, no code) and closes. The API's own check (in the
//! `observe` middleware, at [`super::HEADER_LIMIT`]) only sees heads hyper accepted. So the socket
//! is wrapped: [`HeadLimit`] counts the bytes and field lines of each head as hyper reads them,
//! and when a head would pass [`HeadLimits::bytes`] or [`HeadLimits::fields`] (both set below
//! hyper's own limits) it gives hyper none of those bytes, writes the JSON `431` itself
//! (`Connection: close`), and ends the stream, so hyper sees a client that went away.
//!
//! Heads are found by framing, not guessed: a head ends at its empty line; a head without a body
//! is followed by the next head; a `Content-Length` body is counted off. A chunked body (or a head
//! whose framing the guard cannot read) leaves the rest of the connection unguarded: hyper's own
//! limits then still hold, with its bare `431`. Not a parser: hyper still parses and validates
//! every request; the guard only decides when a head is too big.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Bytes;
use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How large a head may grow before the guard answers `431` itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadLimits {
    /// Bytes of one head: its request line, its fields and their line ends.
    pub bytes: usize,
    /// Header field lines of one head.
    pub fields: usize,
}

/// A framing-relevant header field's value, as far as the guard needs it.
const FRAMING_PREFIX: usize = 64;

/// Where the guard is in the request stream.
#[derive(Debug)]
enum Scan {
    /// Reading a head.
    Head(Head),
    /// Reading a body of this many more bytes.
    Body(u64),
    /// Framing the guard does not follow (chunked): hyper's own limits apply from here on.
    Unguarded,
    /// Writing the `431`; this many bytes of it are out.
    Refusing(usize),
    /// The `431` is out: the stream reads as closed.
    Refused,
}

/// The state of the head being read.
#[derive(Debug, Default)]
struct Head {
    /// Bytes of this head so far, leading empty lines included.
    bytes: usize,
    /// Completed lines (the request line, then fields).
    lines: usize,
    /// The first bytes of the current line, lowercased, for the framing fields.
    line: Vec<u8>,
    /// The current line's length.
    line_len: usize,
    /// `Content-Length`, when given (the last one: hyper refuses differing ones).
    content_length: Option<u64>,
    /// A `Transfer-Encoding` field, or a framing field the guard could not read.
    unframed: bool,
}

impl Head {
    /// Takes one byte; `Some(scan)` when the head ends with it.
    fn push(&mut self, byte: u8) -> Option<Scan> {
        // Every byte counts, leading empty lines too: the guard is never laxer than hyper.
        self.bytes += 1;
        if byte != b'\n' {
            self.line_len += 1;
            if self.line.len() < FRAMING_PREFIX {
                self.line.push(byte.to_ascii_lowercase());
            }
            return None;
        }
        let content = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let empty = content.is_empty() && self.line_len <= 1;
        if self.lines == 0 && empty {
            // A line end before the request line: hyper skips those.
            self.line.clear();
            self.line_len = 0;
            return None;
        }
        if empty {
            return Some(if self.unframed {
                Scan::Unguarded
            } else {
                match self.content_length {
                    Some(n) if n > 0 => Scan::Body(n),
                    _ => Scan::Head(Head::default()),
                }
            });
        }
        if self.lines > 0 {
            self.framing_field();
        }
        self.lines += 1;
        self.line.clear();
        self.line_len = 0;
        None
    }

    /// Reads `Content-Length` and `Transfer-Encoding` from the current (field) line.
    fn framing_field(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let name = &line[..colon];
        if name == b"transfer-encoding" {
            self.unframed = true;
        } else if name == b"content-length" {
            let complete = self.line_len <= FRAMING_PREFIX;
            let value = std::str::from_utf8(&line[colon + 1..])
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match value {
                Some(n) if complete => self.content_length = Some(n),
                _ => self.unframed = true,
            }
        }
    }

    /// Field lines so far, counting one being read (not the empty line that ends the head).
    fn fields(&self) -> usize {
        let reading = self.lines > 0 && self.line.first().is_some_and(|&b| b != b'\r');
        self.lines.saturating_sub(1) + usize::from(reading)
    }
}

/// A socket whose request heads are bounded by [`HeadLimits`], answered with `refusal` (a whole
/// HTTP response) when one is not.
pub(super) struct HeadLimit<IO> {
    inner: IO,
    limits: HeadLimits,
    refusal: Bytes,
    scan: Scan,
}

impl<IO> HeadLimit<IO> {
    pub(super) fn new(inner: IO, limits: HeadLimits, refusal: Bytes) -> Self {
        HeadLimit {
            inner,
            limits,
            refusal,
            scan: Scan::Head(Head::default()),
        }
    }

    /// Scans `data` (just read); the count of its bytes hyper may have, all unless a head
    /// went over the limits.
    fn scan(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        while at < data.len() {
            match &mut self.scan {
                Scan::Head(head) => {
                    if let Some(next) = head.push(data[at]) {
                        self.scan = next;
                    } else if head.bytes > self.limits.bytes || head.fields() > self.limits.fields {
                        self.scan = Scan::Refusing(0);
                        return 0;
                    }
                    at += 1;
                }
                Scan::Body(left) => {
                    let take =
                        usize::try_from(*left).map_or(data.len() - at, |l| l.min(data.len() - at));
                    *left -= take as u64;
                    at += take;
                    if *left == 0 {
                        self.scan = Scan::Head(Head::default());
                    }
                }
                Scan::Unguarded | Scan::Refusing(_) | Scan::Refused => return data.len(),
            }
        }
        data.len()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> HeadLimit<IO> {
    /// Writes the rest of the refusal; ready once it is out and flushed.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Scan::Refusing(sent) = self.scan {
            if sent == self.refusal.len() {
                ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                self.scan = Scan::Refused;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.refusal[sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.scan = Scan::Refusing(sent + n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadLimit<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.scan {
                Scan::Refusing(_) => {
                    ready!(this.poll_refuse(cx))?;
                    continue;
                }
                // Reads as closed: hyper drops the connection without answering.
                Scan::Refused => return Poll::Ready(Ok(())),
                Scan::Unguarded => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Scan::Head(_) | Scan::Body(_) => {}
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let filled = buf.filled().len();
            let keep = this.scan(&buf.filled()[before..filled]);
            if keep == filled - before {
                return Poll::Ready(Ok(()));
            }
            // Over the limits: hyper gets none of this read, and the refusal goes out.
            buf.set_filled(before);
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeadLimit<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.scan, Scan::Refusing(_) | Scan::Refused) {
            // The refusal owns the socket; hyper's writes are dropped.
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.scan, Scan::Refusing(_) | Scan::Refused) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.scan, Scan::Refusing(_)) {
            ready!(this.poll_refuse(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The bytes of a whole HTTP/1.1 response: `status`, a JSON `body`, and `Connection: close`.
pub(super) fn close_response(status: StatusCode, body: &[u8]) -> Bytes {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        bytes: 100,
        fields: 3,
    };

    fn guard() -> HeadLimit<()> {
        HeadLimit::new((), LIMITS, Bytes::from_static(b"refused"))
    }

    /// Feeds `data` in pieces of `step` bytes; how many bytes were let through before a refusal.
    fn feed(data: &[u8], step: usize) -> (usize, bool) {
        let mut g = guard();
        let mut through = 0;
        for piece in data.chunks(step) {
            let keep = g.scan(piece);
            through += keep;
            if matches!(g.scan, Scan::Refusing(_)) {
                return (through, true);
            }
        }
        (through, false)
    }

    #[test]
    fn heads_within_the_limits_pass_in_any_split() {
        let two = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n";
        for step in 1..two.len() {
            assert_eq!(feed(two, step), (two.len(), false), "step {step}");
        }
    }

    #[test]
    fn a_head_over_the_byte_limit_is_refused_before_hyper_sees_it() {
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(200));
        for step in [1, 7, 64, 4096] {
            let (through, refused) = feed(big.as_bytes(), step);
            assert!(refused, "step {step}");
            assert!(
                through <= LIMITS.bytes,
                "step {step}: {through} bytes let through"
            );
        }
    }

    #[test]
    fn a_head_over_the_field_limit_is_refused() {
        let many = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n";
        assert!(feed(many.as_bytes(), 1).1);
        let three = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert_eq!(feed(three.as_bytes(), 5), (three.len(), false));
    }

    #[test]
    fn a_content_length_body_is_not_read_as_a_head() {
        let body = "x".repeat(500);
        let request = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET / HTTP/1.1\r\n\r\n",
            body.len()
        );
        assert_eq!(feed(request.as_bytes(), 33), (request.len(), false));
        // The head after the body is guarded again.
        let request = format!(
            "POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET / HTTP/1.1\r\nx: {}\r\n\r\n",
            "a".repeat(200)
        );
        assert!(feed(request.as_bytes(), 10).1);
    }

    #[test]
    fn a_chunked_body_leaves_the_connection_to_hyper() {
        let request = format!(
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{}",
            "z".repeat(500)
        );
        assert_eq!(feed(request.as_bytes(), 9), (request.len(), false));
    }

    #[test]
    fn bare_line_feeds_and_leading_empty_lines_end_lines_as_hyper_reads_them() {
        let request = "\r\n\r\nGET / HTTP/1.1\nhost: x\n\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(feed(request.as_bytes(), 1), (request.len(), false));
        let mut g = guard();
        g.scan(b"\r\nGET / HTTP/1.1\nhost: x\n\n");
        assert!(matches!(&g.scan, Scan::Head(h) if h.bytes == 0 && h.lines == 0));
        let mut g = guard();
        g.scan(b"\r\n\r\nGET");
        assert!(matches!(&g.scan, Scan::Head(h) if h.bytes == 7 && h.lines == 0));
    }

    #[test]
    fn the_refusal_is_a_whole_json_response_that_closes() {
        let r = close_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            b"{\"code\":\"x\"}",
        );
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"code\":\"x\"}"));
    }
}
