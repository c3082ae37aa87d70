//! Streams the entries of a top-level JSON object `{key: value, ...}` one at
//! a time, so that a file of several GB never sits in memory whole: only one
//! entry's value is alive at once.
//!
//! The value type must accept any JSON shape without a data error: serde_json
//! cannot resume after one, so a type mismatch in one entry would end the
//! stream. `serde_json::Value` qualifies, as do the loose types of
//! `howto100m`.

use std::cell::Cell;
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::Path;
use std::rc::Rc;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};

use crate::error::{Location, NarrationError};

/// How a stream ended.
#[derive(Debug)]
pub(crate) enum StreamEnd {
    Complete,
    /// The callback asked to stop.
    Stopped,
    /// A syntax error, truncation or non-object top level; the entries before
    /// it were delivered.
    Failed(NarrationError),
}

/// A buffered reader that counts newlines as bytes are handed out. serde_json
/// reads byte by byte, so the count is the line the parser is on, which
/// gives each entry the line of its key.
struct LineCounter<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    line: Rc<Cell<usize>>,
}

impl<R: Read> Read for LineCounter<R> {
    #[inline]
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // serde_json asks for one byte at a time; keep that path short.
        if self.pos < self.len && out.len() == 1 {
            let byte = self.buf[self.pos];
            out[0] = byte;
            self.pos += 1;
            if byte == b'\n' {
                self.line.set(self.line.get() + 1);
            }
            return Ok(1);
        }
        if self.pos == self.len {
            self.len = loop {
                match self.inner.read(&mut self.buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.pos = 0;
        }
        let n = out.len().min(self.len - self.pos);
        let chunk = &self.buf[self.pos..self.pos + n];
        out[..n].copy_from_slice(chunk);
        let newlines = chunk.iter().filter(|&&b| b == b'\n').count();
        self.line.set(self.line.get() + newlines);
        self.pos += n;
        Ok(n)
    }
}

const STOP: &str = "stopped by callback";

type EntryFn<'a, T> = dyn FnMut(String, usize, T) -> ControlFlow<()> + 'a;

struct Entries<'a, 'f, T> {
    f: &'a mut EntryFn<'f, T>,
    line: Rc<Cell<usize>>,
    stopped: &'a Cell<bool>,
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Entries<'_, '_, T> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object keyed by video id")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let line = self.line.get();
            let value: T = map.next_value()?;
            if (self.f)(key, line, value).is_break() {
                self.stopped.set(true);
                return Err(de::Error::custom(STOP));
            }
        }
        Ok(())
    }
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Entries<'_, '_, T> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

/// Calls `f(key, line_of_key, value)` for each entry of the top-level object.
pub(crate) fn for_each_entry<R: Read, T: DeserializeOwned>(
    reader: R,
    file: &Path,
    f: &mut EntryFn<'_, T>,
) -> StreamEnd {
    let line = Rc::new(Cell::new(1));
    let counter =
        LineCounter { inner: reader, buf: vec![0; 1 << 16].into_boxed_slice(), pos: 0, len: 0, line: Rc::clone(&line) };
    let stopped = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_reader(counter);
    let result =
        Entries { f, line, stopped: &stopped }.deserialize(&mut deserializer).and_then(|()| deserializer.end());
    let error = match result {
        Ok(()) => return StreamEnd::Complete,
        Err(_) if stopped.get() => return StreamEnd::Stopped,
        Err(e) => e,
    };
    let at = position(file, error.line(), error.column());
    let message = error.to_string();
    StreamEnd::Failed(match error.classify() {
        serde_json::error::Category::Eof => NarrationError::Truncated { at, message },
        serde_json::error::Category::Syntax => NarrationError::Json { at, message },
        serde_json::error::Category::Data => NarrationError::malformed(at, message),
        serde_json::error::Category::Io => match error.io_error_kind() {
            Some(kind) => NarrationError::io(file, io::Error::new(kind, message)),
            None => NarrationError::malformed(at, message),
        },
    })
}

/// serde_json reports line 0 for "no position" (I/O errors).
fn position(file: &Path, line: usize, column: usize) -> Location {
    let mut at = Location::file(file);
    if line > 0 {
        at.line = Some(line);
        at.column = (column > 0).then_some(column);
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn collect(text: &str) -> (Vec<(String, usize)>, StreamEnd) {
        let mut seen = Vec::new();
        let end = for_each_entry(text.as_bytes(), Path::new("c.json"), &mut |k, line, _: Value| {
            seen.push((k, line));
            ControlFlow::Continue(())
        });
        (seen, end)
    }

    #[test]
    fn entries_come_with_the_line_of_their_key() {
        let (seen, end) = collect("{\n\"a\": {\"x\": 1},\n\n\"b\": [1,\n2],\n\"c\": null\n}\n");
        assert!(matches!(end, StreamEnd::Complete));
        assert_eq!(seen, [("a".into(), 2), ("b".into(), 4), ("c".into(), 6)]);
    }

    #[test]
    fn trailing_garbage_and_non_object_are_failures() {
        let (seen, end) = collect("{\"a\": 1} x");
        assert_eq!(seen.len(), 1);
        assert!(matches!(end, StreamEnd::Failed(NarrationError::Json { .. })));
        let (seen, end) = collect("[1, 2]");
        assert!(seen.is_empty());
        assert!(matches!(end, StreamEnd::Failed(NarrationError::Malformed { .. })));
    }

    #[test]
    fn io_error_mid_stream_is_reported_as_io() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let data = b"{\"a\": 1, \"b\": ";
                if self.0 >= data.len() {
                    return Err(io::Error::other("disk gone"));
                }
                let n = out.len().min(data.len() - self.0);
                out[..n].copy_from_slice(&data[self.0..self.0 + n]);
                self.0 += n;
                Ok(n)
            }
        }
        let mut keys = Vec::new();
        let end = for_each_entry(Failing(0), Path::new("c.json"), &mut |k, _, _: Value| {
            keys.push(k);
            ControlFlow::Continue(())
        });
        assert_eq!(keys, ["a"]);
        assert!(matches!(end, StreamEnd::Failed(NarrationError::Io { .. })));
    }
}
