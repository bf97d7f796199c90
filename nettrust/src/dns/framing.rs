//! The 2-byte length framing of DNS over TCP and TLS (RFC 1035 §4.2.2, RFC 7766 §8), one copy
//! for the listeners and the upstream connections. A frame is built in one `BytesMut` (length
//! and message in one buffer, sent with one write: RFC 7766 §8 asks that they not be split into
//! separate segments); a message read is a `Bytes`, handed from an upstream connection's reader
//! task to the query waiting for it without another copy.

use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// `message` with its length in front; `None` for one longer than 65,535 bytes.
pub(crate) fn frame(message: &[u8]) -> Option<BytesMut> {
    let len = u16::try_from(message.len()).ok()?;
    let mut framed = BytesMut::with_capacity(message.len() + 2);
    framed.put_u16(len);
    framed.put_slice(message);
    Some(framed)
}

/// The `len` bytes of a message whose length prefix was just read.
pub(crate) async fn read_message(
    reader: &mut (impl AsyncRead + Unpin),
    len: u16,
) -> std::io::Result<Bytes> {
    let mut message = BytesMut::zeroed(usize::from(len));
    reader.read_exact(&mut message).await?;
    Ok(message.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_reads_back_as_its_message() {
        let framed = frame(b"\x12\x34hello").unwrap();
        assert_eq!(&framed[..2], &7u16.to_be_bytes());
        let mut rest = &framed[2..];
        let message = read_message(&mut rest, 7).await.unwrap();
        assert_eq!(&message[..], b"\x12\x34hello");
        assert!(frame(&vec![0; 65_536]).is_none());
    }
}
