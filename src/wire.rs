//! The big-endian byte forms Cinder writes for other Cinder processes (a
//! broadcast's byte form, the cluster envelope): a writer and a reader that
//! never panics and never allocates more than the input holds.

/// Why bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The bytes end before the value does.
    #[error("truncated")]
    Truncated,
    /// A text field is not UTF-8.
    #[error("text is not UTF-8")]
    Utf8,
}

/// A cursor over bytes being read.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader(bytes)
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        if self.0.len() < n {
            return Err(ReadError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.take(1)?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, ReadError> {
        self.array().map(u16::from_be_bytes)
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, ReadError> {
        self.array().map(u32::from_be_bytes)
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, ReadError> {
        self.array().map(u64::from_be_bytes)
    }

    /// Text with a 16-bit length.
    pub fn text(&mut self) -> Result<String, ReadError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ReadError::Utf8)
    }

    /// Bytes with a 32-bit length.
    pub fn bytes(&mut self) -> Result<&'a [u8], ReadError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A count of items that each take at least `min_item` bytes: refused
    /// when the rest could not hold that many, so a forged count never
    /// makes the reader reserve memory the input does not back.
    pub fn count(&mut self, min_item: usize) -> Result<usize, ReadError> {
        let count = self.u32()? as usize;
        if count.saturating_mul(min_item.max(1)) > self.0.len() {
            return Err(ReadError::Truncated);
        }
        Ok(count)
    }
}

/// Appends text with a 16-bit length (cut at 64 KiB: callers only write
/// topics, events, keys and names, which the size limits keep far shorter).
pub fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut len = text.len().min(u16::MAX as usize);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..len]);
}

/// Appends bytes with a 32-bit length.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let mut out = Vec::new();
        put_text(&mut out, "room:1");
        put_bytes(&mut out, b"{}");
        out.extend_from_slice(&7u32.to_be_bytes());
        let mut reader = Reader::new(&out);
        assert_eq!(reader.text().unwrap(), "room:1");
        assert_eq!(reader.bytes().unwrap(), b"{}");
        assert_eq!(reader.u32().unwrap(), 7);
        assert!(reader.rest().is_empty());
        assert_eq!(reader.u8(), Err(ReadError::Truncated));
    }

    #[test]
    fn forged_lengths_and_counts_are_refused() {
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).bytes(),
            Err(ReadError::Truncated)
        );
        assert_eq!(
            Reader::new(&[0, 0, 0, 200, 1, 2]).count(1),
            Err(ReadError::Truncated)
        );
        assert_eq!(Reader::new(&[0, 0, 0, 2, 1, 2]).count(1), Ok(2));
        assert_eq!(
            Reader::new(&[0, 2, 0xff, 0xfe]).text(),
            Err(ReadError::Utf8)
        );
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let text = "é".repeat(40_000);
        let mut out = Vec::new();
        put_text(&mut out, &text);
        let back = Reader::new(&out).text().unwrap();
        assert!(back.len() <= u16::MAX as usize && text.starts_with(&back));
    }
}
