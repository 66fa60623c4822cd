//! tonic's prost codec with one addition: before prost decodes a request message, its
//! wire bytes are scanned for the entries that each cost an allocation (inputs,
//! outputs, parameters, raw contents, BYTES elements), and a message with more than
//! [`MAX_ENTRIES`] is refused (`INVALID_ARGUMENT`) without being decoded. Without it a
//! message of `--max-body-mb` made of empty BYTES elements (2 wire bytes each, 24 bytes
//! each decoded) would take about twelve times its size.
//!
//! The scan knows `ModelInferRequest`'s field numbers (`proto/inference.proto`); the
//! service's other requests use none of them, so for those it counts nothing.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstCodec;

/// The most allocating entries one request message may hold.
pub const MAX_ENTRIES: usize = 1 << 16;

/// The codec the generated service uses (`build.rs`: `codec_path`).
#[derive(Debug)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder behind the entry count.
#[derive(Debug)]
pub struct BoundedDecoder<U>(tonic_prost::ProstDecoder<U>);

impl<U: Message + Default + Send + 'static> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf;
        let wire = buf.chunk();
        if wire.len() == buf.remaining() {
            let n = infer_request_entries(wire)
                .map_err(|e| Status::invalid_argument(format!("bad_tensor: {e}")))?;
            if n > MAX_ENTRIES {
                return Err(Status::invalid_argument(format!(
                    "bad_tensor: the request message holds {n} inputs, outputs, parameters and elements, more than {MAX_ENTRIES}"
                )));
            }
        }
        self.0.decode(buf)
    }
}

/// Wire types of protobuf.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn varint(b: &[u8], i: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or("a varint is cut short")?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a varint is too long".into())
}

/// Walks the fields of one message: calls `f(field, payload)` for each
/// length-delimited field and returns the number of fields.
fn fields<'a>(
    b: &'a [u8],
    mut f: impl FnMut(u64, &'a [u8]) -> Result<(), String>,
) -> Result<usize, String> {
    let (mut i, mut n) = (0usize, 0usize);
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let skip = match key & 7 {
            VARINT => {
                varint(b, &mut i)?;
                0
            }
            FIXED64 => 8,
            FIXED32 => 4,
            LEN => {
                let len = usize::try_from(varint(b, &mut i)?).map_err(|e| e.to_string())?;
                let payload = b
                    .get(i..i.saturating_add(len))
                    .ok_or("a field is longer than its message")?;
                f(key >> 3, payload)?;
                len
            }
            w => return Err(format!("wire type {w} is not supported")),
        };
        i = i
            .checked_add(skip)
            .filter(|&j| j <= b.len())
            .ok_or("a field is cut short")?;
        n += 1;
    }
    Ok(n)
}

/// The allocating entries of a `ModelInferRequest`: parameters (4), inputs (5),
/// outputs (6) and raw contents (7); in each input its parameters (4) and, in its
/// contents (5), the BYTES elements (8).
pub fn infer_request_entries(b: &[u8]) -> Result<usize, String> {
    let mut n = 0usize;
    fields(b, |field, payload| {
        if (4..=7).contains(&field) {
            n += 1;
        }
        if field == 5 {
            fields(payload, |f, p| {
                if f == 4 {
                    n += 1;
                }
                if f == 5 {
                    fields(p, |c, _| {
                        if c == 8 {
                            n += 1;
                        }
                        Ok(())
                    })?;
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::proto::model_infer_request::InferInputTensor;
    use crate::grpc::proto::{InferTensorContents, ModelInferRequest};

    fn request(elements: usize) -> Vec<u8> {
        ModelInferRequest {
            model_name: "default".into(),
            inputs: vec![InferInputTensor {
                name: "image".into(),
                datatype: "BYTES".into(),
                shape: vec![elements as i64],
                contents: Some(InferTensorContents {
                    bytes_contents: vec![Vec::new(); elements],
                    uint_contents: vec![7; 1000],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            raw_input_contents: vec![vec![1, 2, 3]],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn entries_are_counted_from_the_wire() {
        // One input, one raw content, the elements; the packed integers are not entries.
        assert_eq!(infer_request_entries(&request(10)).unwrap(), 12);
        assert_eq!(infer_request_entries(&request(100_000)).unwrap(), 100_002);
        assert_eq!(infer_request_entries(&[]).unwrap(), 0);
        let wire = request(3);
        assert!(infer_request_entries(&wire[..wire.len() - 1]).is_err());
    }
}
