//! The encoders and decoders behind `compression`, one chunk at a time: each chunk written is
//! flushed (a sync flush), so the client can decode every byte sent so far and nothing waits
//! for the next chunk.

use std::io::Write;

use bytes::Bytes;

use crate::body::{BodyError, ChunkFilter, TooLarge};
use crate::config::spec_compression::{Encoding, Level};

/// The encoder parameters `level` stands for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Levels {
    gzip: u32,
    br: u32,
    zstd: i32,
}

impl Levels {
    /// What each encoding does at `level`.
    pub(crate) fn of(level: Level) -> Self {
        match level {
            Level::Fastest => Levels {
                gzip: 1,
                br: 1,
                zstd: 1,
            },
            Level::Default => Levels {
                gzip: 6,
                br: 4,
                zstd: 3,
            },
            // Not brotli 11 or zstd 19: they compress at well under 1 MiB/s, too slow for
            // answers compressed as they stream.
            Level::Best => Levels {
                gzip: 9,
                br: 5,
                zstd: 6,
            },
        }
    }
}

/// The `Content-Encoding` token of an encoding.
pub(crate) fn token(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Zstd => "zstd",
        Encoding::Br => "br",
        Encoding::Gzip => "gzip",
    }
}

/// Brotli's window: 4 MiB (`lgwin` 22), its default.
const BROTLI_WINDOW: u32 = 22;
/// The buffer the brotli writers work through.
const BROTLI_BUFFER: usize = 16 << 10;

/// One response body's encoder.
pub(crate) enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    // Boxed: brotli's state is large, and taken out whole at the end.
    Br(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// An encoder for `encoding` at `levels`.
    pub(crate) fn new(encoding: Encoding, levels: Levels) -> std::io::Result<Self> {
        Ok(match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(levels.gzip),
            )),
            Encoding::Br => Encoder::Br(Some(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                levels.br,
                BROTLI_WINDOW,
            )))),
            Encoding::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), levels.zstd)?)
            }
        })
    }

    /// What was written out so far, taken.
    fn take(&mut self) -> Bytes {
        let out = match self {
            Encoder::Gzip(w) => w.get_mut(),
            Encoder::Br(Some(w)) => w.get_mut(),
            Encoder::Br(None) => return Bytes::new(),
            Encoder::Zstd(w) => w.get_mut(),
        };
        Bytes::from(std::mem::take(out))
    }

    fn writer(&mut self) -> Option<&mut dyn Write> {
        match self {
            Encoder::Gzip(w) => Some(w),
            Encoder::Br(w) => w.as_deref_mut().map(|w| w as &mut dyn Write),
            Encoder::Zstd(w) => Some(w),
        }
    }

    /// The body's end: the encoding's trailer.
    fn finish(&mut self) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(w) => w.try_finish()?,
            Encoder::Br(w) => {
                // `into_inner` writes brotli's last block.
                return Ok(w
                    .take()
                    .map_or_else(Bytes::new, |w| Bytes::from(w.into_inner())));
            }
            Encoder::Zstd(w) => w.do_finish()?,
        }
        Ok(self.take())
    }
}

impl ChunkFilter for Encoder {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        if data.is_empty() {
            return Ok(data);
        }
        let Some(w) = self.writer() else {
            return Ok(Bytes::new());
        };
        w.write_all(&data)?;
        w.flush()?;
        Ok(self.take())
    }

    fn wants_end(&self) -> bool {
        true
    }

    fn end(
        &mut self,
        trailers: Option<http::HeaderMap>,
    ) -> Result<(Bytes, Option<http::HeaderMap>), BodyError> {
        Ok((self.finish()?, trailers))
    }
}

/// Where a decoder writes: refuses to hold more than `left` more bytes, so a small body that
/// decodes to gigabytes stops at the bound, in bounded memory.
pub(crate) struct Bounded {
    out: Vec<u8>,
    left: u64,
    limit: u64,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let len = buf.len() as u64;
        if len > self.left {
            self.left = 0;
            return Err(std::io::Error::other(TooLarge(self.limit)));
        }
        self.left -= len;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One request body's decoder, bounded in decoded bytes.
pub(crate) enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Bounded>>),
    Br(Box<brotli::DecompressorWriter<Bounded>>),
    Zstd(zstd::stream::write::Decoder<'static, Bounded>),
    /// The decoder could not be made (no memory for its context): the body fails.
    Broken,
}

impl Decoder {
    /// A decoder for `encoding` that refuses more than `limit` decoded bytes.
    pub(crate) fn new(encoding: Encoding, limit: u64) -> Self {
        let sink = Bounded {
            out: Vec::new(),
            left: limit,
            limit,
        };
        match encoding {
            Encoding::Gzip => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(sink))),
            Encoding::Br => Decoder::Br(Box::new(brotli::DecompressorWriter::new(
                sink,
                BROTLI_BUFFER,
            ))),
            Encoding::Zstd => match zstd::stream::write::Decoder::new(sink) {
                Ok(decoder) => Decoder::Zstd(decoder),
                Err(_) => Decoder::Broken,
            },
        }
    }

    fn take(&mut self) -> Bytes {
        let sink = match self {
            Decoder::Gzip(w) => w.get_mut(),
            Decoder::Br(w) => w.get_mut(),
            Decoder::Zstd(w) => w.get_mut(),
            Decoder::Broken => return Bytes::new(),
        };
        Bytes::from(std::mem::take(&mut sink.out))
    }
}

/// A decoder's failure as a body error: past the bound it is [`TooLarge`] (a 413), anything
/// else a broken body.
fn body_error(err: std::io::Error) -> BodyError {
    if err
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<TooLarge>().is_some())
        && let Some(inner) = err.into_inner()
        && let Ok(too_large) = inner.downcast::<TooLarge>()
    {
        return too_large;
    }
    Box::new(DecodeError)
}

/// A request body that does not decode as its `Content-Encoding` says.
#[derive(Debug, thiserror::Error)]
#[error("the request body does not decode as its Content-Encoding says")]
pub(crate) struct DecodeError;

impl ChunkFilter for Decoder {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        let written = match self {
            Decoder::Gzip(w) => w.write_all(&data).and_then(|()| w.flush()),
            Decoder::Br(w) => w.write_all(&data).and_then(|()| w.flush()),
            Decoder::Zstd(w) => w.write_all(&data).and_then(|()| w.flush()),
            Decoder::Broken => return Err(Box::new(DecodeError)),
        };
        written.map_err(body_error)?;
        Ok(self.take())
    }

    fn wants_end(&self) -> bool {
        true
    }

    fn end(
        &mut self,
        trailers: Option<http::HeaderMap>,
    ) -> Result<(Bytes, Option<http::HeaderMap>), BodyError> {
        let finished = match self {
            Decoder::Gzip(w) => w.try_finish(),
            Decoder::Br(w) => w.close(),
            Decoder::Zstd(w) => w.flush(),
            Decoder::Broken => return Err(Box::new(DecodeError)),
        };
        finished.map_err(body_error)?;
        Ok((self.take(), trailers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(encoding: Encoding, chunks: &[&[u8]]) -> (Vec<Bytes>, Bytes) {
        let mut enc = Encoder::new(encoding, Levels::of(Level::Default)).unwrap();
        let parts = chunks
            .iter()
            .map(|c| enc.chunk(Bytes::copy_from_slice(c)).unwrap())
            .collect();
        let (end, _) = enc.end(None).unwrap();
        (parts, end)
    }

    fn decode(encoding: Encoding, data: &[u8], limit: u64) -> Result<Vec<u8>, BodyError> {
        let mut dec = Decoder::new(encoding, limit);
        let mut out = dec.chunk(Bytes::copy_from_slice(data))?.to_vec();
        out.extend_from_slice(&dec.end(None)?.0);
        Ok(out)
    }

    #[test]
    fn each_encoding_round_trips_chunk_by_chunk() {
        for encoding in [Encoding::Gzip, Encoding::Br, Encoding::Zstd] {
            let (parts, end) = encode(encoding, &[b"hello ", b"", b"world"]);
            // Every chunk is flushed: what was sent so far decodes to what came so far.
            let first = decode_prefix(encoding, &parts[0]);
            assert_eq!(first, b"hello ", "{encoding:?}");
            let all: Vec<u8> = parts
                .iter()
                .chain([&end])
                .flat_map(|b| b.to_vec())
                .collect();
            assert_eq!(decode(encoding, &all, 1 << 20).unwrap(), b"hello world");
        }
    }

    fn decode_prefix(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        let mut dec = Decoder::new(encoding, 1 << 20);
        dec.chunk(Bytes::copy_from_slice(data)).unwrap().to_vec()
    }

    #[test]
    fn decoding_stops_at_the_bound() {
        for encoding in [Encoding::Gzip, Encoding::Br, Encoding::Zstd] {
            let zeros = vec![0u8; 1 << 20];
            let (parts, end) = encode(encoding, &[&zeros]);
            let all: Vec<u8> = parts
                .iter()
                .chain([&end])
                .flat_map(|b| b.to_vec())
                .collect();
            let err = decode(encoding, &all, 1000).unwrap_err();
            assert!(err.downcast_ref::<TooLarge>().is_some(), "{encoding:?}");
            assert_eq!(decode(encoding, &all, 1 << 20).unwrap().len(), 1 << 20);
        }
    }

    #[test]
    fn garbage_is_a_broken_body() {
        for encoding in [Encoding::Gzip, Encoding::Br, Encoding::Zstd] {
            let err = decode(encoding, b"\x01\x02\x03 not compressed at all", 1000).unwrap_err();
            assert!(err.downcast_ref::<DecodeError>().is_some(), "{encoding:?}");
        }
    }
}
