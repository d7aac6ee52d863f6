//! [`Sticky`]: what every sans-IO stream decoder here keeps between calls, its first error
//! (returned again by every later call: a stream that went wrong once is not resynchronised) and
//! how many bytes were left buffered after the last call (a stream that ends with bytes buffered
//! ended inside a frame).

use bytes::BytesMut;

/// A decoder's first error and leftover bytes; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Sticky<E> {
    failed: Option<E>,
    buffered: usize,
}

impl<E> Default for Sticky<E> {
    fn default() -> Self {
        Sticky { failed: None, buffered: 0 }
    }
}

impl<E: Clone> Sticky<E> {
    /// Runs one decoding `step` over `buf` unless an earlier one failed; remembers its error.
    pub(crate) fn decode<T>(
        &mut self,
        buf: &mut BytesMut,
        step: impl FnOnce(&mut BytesMut) -> Result<T, E>,
    ) -> Result<T, E> {
        let result = match &self.failed {
            Some(e) => Err(e.clone()),
            None => step(buf),
        };
        self.buffered = buf.len();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// At the end of the stream: the first error, or `truncated(bytes buffered)` if it ended
    /// inside a frame.
    pub(crate) fn finish(&self, truncated: impl FnOnce(usize) -> E) -> Result<(), E> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.buffered == 0 => Ok(()),
            None => Err(truncated(self.buffered)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sticky;
    use bytes::BytesMut;

    #[test]
    fn the_first_error_sticks_and_leftovers_mean_truncation() {
        let mut s: Sticky<String> = Sticky::default();
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(s.decode(&mut buf, |b| Ok::<_, String>(b.split_to(1).len())), Ok(1));
        assert_eq!(s.finish(|n| format!("{n} left")), Err("2 left".to_string()));
        assert_eq!(s.decode(&mut buf, |_| Err::<usize, _>("bad".to_string())), Err("bad".to_string()));
        // Later steps are not run.
        assert_eq!(s.decode(&mut buf, |_| Ok(7)), Err("bad".to_string()));
        assert_eq!(s.finish(|_| "unused".to_string()), Err("bad".to_string()));
        let mut clean: Sticky<String> = Sticky::default();
        assert_eq!(clean.decode(&mut BytesMut::new(), |_| Ok::<_, String>(())), Ok(()));
        assert_eq!(clean.finish(|_| "unused".to_string()), Ok(()));
    }
}
