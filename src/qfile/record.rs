//! Queue-file records (`global/record.c`, `global/rec_type.h`): one type
//! byte, a length in base-128 little-endian groups (0x80 = more), then the
//! data. Reading never trusts a length: a record longer than what is left
//! of the file is an error, not an allocation.

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

/// Record type bytes (`global/rec_type.h`).
pub mod rec {
    pub const SIZE: u8 = b'C';
    pub const TIME: u8 = b'T';
    pub const CTIME: u8 = b'c';
    pub const FULL: u8 = b'F';
    pub const INSP: u8 = b'I';
    pub const FILT: u8 = b'L';
    pub const FROM: u8 = b'S';
    pub const DONE: u8 = b'D';
    pub const RCPT: u8 = b'R';
    pub const ORCP: u8 = b'O';
    pub const DRCP: u8 = b'/';
    pub const WARN: u8 = b'W';
    pub const ATTR: u8 = b'A';
    pub const KILL: u8 = b'K';
    pub const RDR: u8 = b'>';
    pub const MESG: u8 = b'M';
    pub const CONT: u8 = b'L';
    pub const NORM: u8 = b'N';
    pub const DTXT: u8 = b'w';
    pub const XTRA: u8 = b'X';
    pub const RRTO: u8 = b'r';
    pub const ERTO: u8 = b'e';
    pub const PRIO: u8 = b'P';
    pub const PTR: u8 = b'p';
    pub const VERP: u8 = b'V';
    pub const DSN_RET: u8 = b'<';
    pub const DSN_ENVID: u8 = b'i';
    pub const DSN_ORCPT: u8 = b'o';
    pub const DSN_NOTIFY: u8 = b'n';
    pub const END: u8 = b'E';

    /// Record types allowed in the envelope segment.
    pub const ENVELOPE: &[u8] = b"MCTcFILSDRO/WVA>K<ion";
    /// Record types allowed in the extracted segment.
    pub const EXTRACT: &[u8] = b"EDRO/PreAFIL>Kon";
}

/// A record that could not be read; the text is Postfix's warning, to be
/// prefixed with the file's path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("too many length bits, record type {0}")]
    TooManyLengthBits(u8),
    #[error("unexpected EOF reading length, record type {0}")]
    EofInLength(u8),
    #[error("unexpected EOF in data, record type {0} length {1}")]
    EofInData(u8, u64),
    #[error("read error: {0}")]
    Io(String),
}

/// Appends one record to `out` (`rec_put`).
pub fn put_record(out: &mut Vec<u8>, rtype: u8, data: &[u8]) {
    out.push(rtype);
    let mut len = data.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(data);
}

/// Reads records from a seekable file, keeping track of the offset of each
/// record so that recipients can be marked done in place later.
pub struct RecordReader<R: Read + Seek> {
    inner: BufReader<R>,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> RecordReader<R> {
    /// Wraps `inner`, whose total length is `len` bytes.
    pub fn new(inner: R, len: u64) -> RecordReader<R> {
        RecordReader {
            inner: BufReader::with_capacity(8192, inner),
            pos: 0,
            len,
        }
    }

    /// The offset of the next record.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Moves to `offset` (keeps the buffer when the target is inside it).
    ///
    /// Errors: the underlying seek error, or `InvalidInput` for a distance
    /// that does not fit an `i64` (a pointer record's value is file data).
    pub fn seek(&mut self, offset: u64) -> io::Result<()> {
        let delta = i64::try_from(i128::from(offset) - i128::from(self.pos))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seek offset out of range"))?;
        self.inner.seek_relative(delta)?;
        self.pos = offset;
        Ok(())
    }

    fn byte(&mut self) -> Result<Option<u8>, RecordError> {
        let buf = self
            .inner
            .fill_buf()
            .map_err(|e| RecordError::Io(crate::log::errno_text(&e)))?;
        match buf.first() {
            None => Ok(None),
            Some(&b) => {
                self.inner.consume(1);
                self.pos += 1;
                Ok(Some(b))
            }
        }
    }

    /// Reads the next record into `data`; returns its type, or `None` at a
    /// clean end of file (`rec_get_raw` with no flags).
    ///
    /// Errors: a truncated length or data, more than 32 length bits, or an
    /// I/O error.
    pub fn read(&mut self, data: &mut Vec<u8>) -> Result<Option<u8>, RecordError> {
        data.clear();
        let Some(rtype) = self.byte()? else {
            return Ok(None);
        };
        let mut len: u64 = 0;
        let mut shift = 0;
        loop {
            if shift >= 32 {
                return Err(RecordError::TooManyLengthBits(rtype));
            }
            let b = self.byte()?.ok_or(RecordError::EofInLength(rtype))?;
            len |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        if len > self.len.saturating_sub(self.pos) {
            return Err(RecordError::EofInData(rtype, len));
        }
        data.reserve(len as usize);
        let mut left = len as usize;
        while left > 0 {
            let buf = self
                .inner
                .fill_buf()
                .map_err(|e| RecordError::Io(crate::log::errno_text(&e)))?;
            if buf.is_empty() {
                return Err(RecordError::EofInData(rtype, len));
            }
            let n = buf.len().min(left);
            data.extend_from_slice(&buf[..n]);
            self.inner.consume(n);
            self.pos += n as u64;
            left -= n;
        }
        Ok(Some(rtype))
    }

    /// Skips `n` bytes forward.
    ///
    /// Errors: the underlying seek error.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        self.seek(self.pos + n)
    }
}

impl<R: Read + Seek> RecordReader<R> {
    /// Gives back the underlying reader, positioned at the next record.
    ///
    /// Errors: the seek that discards the read-ahead buffer.
    pub fn into_inner(mut self) -> io::Result<R> {
        self.inner.seek(SeekFrom::Start(self.pos))?;
        Ok(self.inner.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn round_trip_lengths() {
        for len in [0usize, 1, 127, 128, 300, 16384, 70000] {
            let data = vec![b'x'; len];
            let mut out = Vec::new();
            put_record(&mut out, rec::NORM, &data);
            let total = out.len() as u64;
            let mut r = RecordReader::new(Cursor::new(out), total);
            let mut buf = Vec::new();
            assert_eq!(r.read(&mut buf).unwrap(), Some(rec::NORM));
            assert_eq!(buf.len(), len);
            assert_eq!(r.pos(), total);
            assert_eq!(r.read(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn truncated_records() {
        let mut buf = Vec::new();
        let mut r = RecordReader::new(Cursor::new(vec![b'N']), 1);
        assert_eq!(r.read(&mut buf), Err(RecordError::EofInLength(b'N')));
        let mut r = RecordReader::new(Cursor::new(vec![b'g', 97, b'a']), 3);
        assert_eq!(r.read(&mut buf), Err(RecordError::EofInData(b'g', 97)));
        let mut r = RecordReader::new(
            Cursor::new(vec![b'N', 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            7,
        );
        assert_eq!(r.read(&mut buf), Err(RecordError::TooManyLengthBits(b'N')));
    }
}
