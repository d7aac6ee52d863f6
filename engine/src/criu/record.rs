//! The framing of CRIU image files: two u32 magics, then `[u32 length][protobuf]` records until a
//! clean EOF. All integers are in host byte order, as CRIU writes them.

use std::path::Path;

use super::error::{ImageError, ImageErrorKind};

/// A cursor over the bytes of one image file that reports defects with the file name and the
/// offset of the record they are in.
pub struct RecordReader<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl<'a> RecordReader<'a> {
    /// A reader over `data`, the whole content of the file at `path`.
    pub fn new(path: &'a Path, data: &'a [u8]) -> Self {
        Self { path, data, pos: 0 }
    }

    /// The current byte offset.
    pub fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn take_u32(&mut self, what: &'static str) -> Result<u32, ImageError> {
        let have = self.data.len() - self.pos;
        let bytes = self.data.get(self.pos..self.pos + 4).ok_or_else(|| {
            ImageError::at(self.path, self.pos as u64, ImageErrorKind::Truncated { what, need: 4, have: have as u64 })
        })?;
        self.pos += 4;
        Ok(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Checks the common magic followed by `magic`.
    pub fn expect_magics(&mut self, magic: u32) -> Result<(), ImageError> {
        for expected in [super::magic::IMG_COMMON_MAGIC, magic] {
            let off = self.pos as u64;
            let found = self.take_u32("magic")?;
            if found != expected {
                return Err(ImageError::at(self.path, off, ImageErrorKind::BadMagic { expected, found }));
            }
        }
        Ok(())
    }

    /// The next record's offset and body, `None` at a clean EOF on a record boundary.
    pub fn next_record(&mut self) -> Result<Option<(u64, &'a [u8])>, ImageError> {
        if self.pos == self.data.len() {
            return Ok(None);
        }
        let off = self.pos as u64;
        let len = self.take_u32("record length")? as usize;
        let have = self.data.len() - self.pos;
        if len > have {
            return Err(ImageError::at(
                self.path,
                off,
                ImageErrorKind::Truncated { what: "record", need: len as u64, have: have as u64 },
            ));
        }
        let body = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(Some((off, body)))
    }

    /// Decodes the next record as `M`, `None` at a clean EOF.
    pub fn next_message<M: prost::Message + Default>(&mut self) -> Result<Option<(u64, M)>, ImageError> {
        match self.next_record()? {
            None => Ok(None),
            Some((off, body)) => {
                let msg = M::decode(body).map_err(|e| ImageError::at(self.path, off, e.into()))?;
                Ok(Some((off, msg)))
            }
        }
    }
}

/// Appends the two magics of an image file.
pub fn write_magics(out: &mut Vec<u8>, magic: u32) {
    out.extend_from_slice(&super::magic::IMG_COMMON_MAGIC.to_ne_bytes());
    out.extend_from_slice(&magic.to_ne_bytes());
}

/// Appends one length-prefixed record.
pub fn write_message<M: prost::Message>(out: &mut Vec<u8>, msg: &M) {
    let len = msg.encoded_len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.encode_raw(out);
}
