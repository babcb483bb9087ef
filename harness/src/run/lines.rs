//! Bounded line framing for the two JSON-lines channels, QMP and the agent link.
//!
//! Hand-written rather than `tokio_util::codec::LinesCodec::new_with_max_length`: at EOF that
//! codec hands back a partial last line as if it were whole, so a guest or QEMU cut off in
//! the middle of a message would surface as a confusing JSON error (or, for a truncated line
//! that still parses, not at all); here it is [`LineError::CutByEof`]. The codec also rejects
//! invalid UTF-8 as a bare I/O error, before the caller can name the line that had it.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Why no line could be read.
#[derive(Debug)]
pub(crate) enum LineError {
    Io(std::io::Error),
    /// A line longer than the limit: the stream is garbage from here on.
    TooLong,
    /// EOF after these bytes of a line and before its newline.
    CutByEof(Vec<u8>),
}

/// Reads one `\n`-terminated line of at most `max` bytes, newline excluded, and returns it
/// without the newline; `Ok(None)` at EOF between lines. Never buffers more than `max + 1`
/// bytes.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, LineError> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await.map_err(LineError::Io)?;
        if chunk.is_empty() {
            return if buf.is_empty() { Ok(None) } else { Err(LineError::CutByEof(buf)) };
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take > max + 1 {
            return Err(LineError::TooLong);
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if done {
            buf.pop();
            return Ok(Some(buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_a_cut_one_is_told_apart() {
        let mut r: &[u8] = b"one\n\ntwo\nthr";
        assert_eq!(read_line(&mut r, 3).await.unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(read_line(&mut r, 3).await.unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(read_line(&mut r, 3).await.unwrap().as_deref(), Some(&b"two"[..]));
        assert!(matches!(read_line(&mut r, 3).await, Err(LineError::CutByEof(b)) if b == b"thr"));
        let mut empty: &[u8] = b"";
        assert!(matches!(read_line(&mut empty, 3).await, Ok(None)));
        let mut long: &[u8] = b"four\n";
        assert!(matches!(read_line(&mut long, 3).await, Err(LineError::TooLong)));
    }
}
