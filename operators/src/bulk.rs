//! Containers for bulk payloads: the gradient exchange's records.
//!
//! Two things make timely's defaults a poor fit for a 250 MB gradient that
//! crosses workers every step:
//!
//! - Batching. Timely's `Vec` containers hold up to 8 KB of
//!   `size_of::<T>()`, about 70 records for a gradient chunk whose payload
//!   lives on the heap, so a step's gradient would leave a worker as one or
//!   two messages of a hundred megabytes: the owner cannot start summing any
//!   chunk before the last byte of the batch arrives, and timely's receive
//!   buffer grows to the message's size, copying what it already holds at
//!   every doubling. [`Unbatched`] ships every record as its own message.
//! - Copies. Through serde, a payload is copied out of the gradient into
//!   its record, into the send buffer, and out of the receive buffer again.
//!   A [`Floats`] payload is a view of the gradient it came from (shared,
//!   read-only), and a received one stays in the bytes of its message:
//!   what remains is the one copy into the send buffer and the sum itself.
//!
//! A record's bytes: the length of its header, the header (bincode), the
//! length of its payload, the payload (little-endian f32), each padded to 8
//! bytes, so that a received payload is aligned for reading as f32.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::io::Write;
use std::ops::{Deref, DerefMut, Range};
use std::sync::Arc;
use timely::bytes::arc::Bytes;
use timely::container::{DrainContainer, PushInto, SizableContainer};
use timely::dataflow::channels::ContainerBytes;
use timely::Accountable;

/// A run of f32 values: a view of a vector shared with other records, or
/// the bytes of the message it arrived in.
#[derive(Clone)]
pub enum Floats {
    View { all: Arc<Vec<f32>>, range: Range<usize> },
    Received(Arc<Bytes>),
}

impl Floats {
    /// A view of `all[range]`.
    pub fn view(all: &Arc<Vec<f32>>, range: Range<usize>) -> Floats {
        assert!(range.end <= all.len(), "a view within the vector");
        Floats::View { all: all.clone(), range }
    }

    /// All of `values`.
    pub fn owned(values: Vec<f32>) -> Floats {
        let range = 0..values.len();
        Floats::View { all: Arc::new(values), range }
    }

    /// The values' little-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Floats::View { all, range } => bytemuck::cast_slice(&all[range.clone()]),
            Floats::Received(bytes) => bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as a slice: borrowed where the bytes are aligned for f32
    /// (always, for views and for messages laid out by this module),
    /// decoded otherwise.
    pub fn as_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Floats::View { all, range } => Cow::Borrowed(&all[range.clone()]),
            Floats::Received(bytes) => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                Ok(values) => Cow::Borrowed(values),
                Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec::<u8, f32>(bytes)),
            },
        }
    }
}

impl std::fmt::Debug for Floats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self, Floats::View { .. }) { "view" } else { "received" };
        write!(f, "Floats({} values, {kind})", self.len())
    }
}

impl PartialEq for Floats {
    fn eq(&self, other: &Floats) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// As bytes, for serde formats other than the exchange's own layout.
impl Serialize for Floats {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Floats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Floats, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        if bytes.len() % 4 != 0 {
            return Err(serde::de::Error::custom(format!("{} bytes are not whole f32 values", bytes.len())));
        }
        Ok(Floats::owned(bytemuck::pod_collect_to_vec(&bytes)))
    }
}

/// A record with a small header and a bulk f32 payload.
pub trait BulkRecord: Sized {
    type Header: Serialize + DeserializeOwned;
    fn header(&self) -> Self::Header;
    fn payload(&self) -> &Floats;
    fn assemble(header: Self::Header, payload: Floats) -> Self;
}

/// A container that is full as soon as it holds one record.
#[derive(Debug, Clone)]
pub struct Unbatched<T>(Vec<T>);

impl<T> Default for Unbatched<T> {
    fn default() -> Self {
        Unbatched(Vec::new())
    }
}

impl<T> Deref for Unbatched<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T> DerefMut for Unbatched<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

impl<T> Accountable for Unbatched<T> {
    fn record_count(&self) -> i64 {
        i64::try_from(self.0.len()).expect("a container's length fits i64")
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> DrainContainer for Unbatched<T> {
    type Item<'a>
        = T
    where
        T: 'a;
    type DrainIter<'a>
        = std::vec::Drain<'a, T>
    where
        T: 'a;
    fn drain(&mut self) -> Self::DrainIter<'_> {
        self.0.drain(..)
    }
}

impl<T> SizableContainer for Unbatched<T> {
    fn at_capacity(&self) -> bool {
        !self.0.is_empty()
    }
    fn ensure_capacity(&mut self, stash: &mut Option<Self>) {
        if self.0.capacity() == 0 {
            if let Some(mut reused) = stash.take() {
                reused.0.clear();
                *self = reused;
            }
        }
    }
}

impl<T> PushInto<T> for Unbatched<T> {
    fn push_into(&mut self, item: T) {
        self.0.push(item);
    }
}

fn padded(n: usize) -> usize {
    n.next_multiple_of(8)
}

const ZEROS: [u8; 8] = [0; 8];

impl<T: BulkRecord> ContainerBytes for Unbatched<T> {
    fn from_bytes(mut bytes: Bytes) -> Self {
        let take_u64 = |bytes: &mut Bytes| {
            let word = bytes.extract_to(8);
            u64::from_le_bytes(word[..].try_into().expect("8 bytes")) as usize
        };
        let count = take_u64(&mut bytes);
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            let header_len = take_u64(&mut bytes);
            let header = bytes.extract_to(padded(header_len));
            let header: T::Header =
                bincode::deserialize(&header[..header_len]).expect("a header this module wrote deserialises");
            let payload_len = take_u64(&mut bytes);
            let mut payload = bytes.extract_to(padded(payload_len));
            if payload_len < payload.len() {
                // Drop the padding: extract_to keeps the prefix.
                let mut rest = payload;
                payload = rest.extract_to(payload_len);
            }
            records.push(T::assemble(header, Floats::Received(Arc::new(payload))));
        }
        Unbatched(records)
    }

    fn length_in_bytes(&self) -> usize {
        8 + self
            .0
            .iter()
            .map(|r| {
                let header = bincode::serialized_size(&r.header()).expect("bincode sizes any serde value") as usize;
                8 + padded(header) + 8 + padded(r.payload().as_bytes().len())
            })
            .sum::<usize>()
    }

    fn into_bytes<W: Write>(&self, writer: &mut W) {
        let mut put = |bytes: &[u8]| writer.write_all(bytes).expect("writing into timely's buffer does not fail");
        put(&(self.0.len() as u64).to_le_bytes());
        for r in &self.0 {
            let header = bincode::serialize(&r.header()).expect("bincode serialises any serde value");
            put(&(header.len() as u64).to_le_bytes());
            put(&header);
            put(&ZEROS[..padded(header.len()) - header.len()]);
            let payload = r.payload().as_bytes();
            put(&(payload.len() as u64).to_le_bytes());
            put(payload);
            put(&ZEROS[..padded(payload.len()) - payload.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::container::{CapacityContainerBuilder, ContainerBuilder};

    #[derive(Debug, Clone, PartialEq)]
    struct Rec {
        id: u32,
        name: String,
        values: Floats,
    }

    impl BulkRecord for Rec {
        type Header = (u32, String);
        fn header(&self) -> (u32, String) {
            (self.id, self.name.clone())
        }
        fn payload(&self) -> &Floats {
            &self.values
        }
        fn assemble((id, name): (u32, String), values: Floats) -> Rec {
            Rec { id, name, values }
        }
    }

    #[test]
    fn every_record_leaves_as_its_own_container() {
        let all = Arc::new((0..10).map(|i| i as f32).collect::<Vec<_>>());
        let mut builder = CapacityContainerBuilder::<Unbatched<Rec>>::default();
        let mut shipped = Vec::new();
        for i in 0..5u32 {
            let values = Floats::view(&all, 2 * i as usize..2 * i as usize + 2);
            builder.push_into(Rec { id: i, name: String::new(), values });
            while let Some(c) = builder.extract() {
                shipped.push(c.0.iter().map(|r| r.id).collect::<Vec<_>>());
            }
        }
        while let Some(c) = builder.finish() {
            shipped.push(c.0.iter().map(|r| r.id).collect::<Vec<_>>());
        }
        assert_eq!(shipped, vec![vec![0], vec![1], vec![2], vec![3], vec![4]]);
        // A Vec container of the same records ships them together.
        let mut batched = CapacityContainerBuilder::<Vec<u32>>::default();
        (0..5u32).for_each(|i| batched.push_into(i));
        assert!(batched.extract().is_none(), "five small records do not fill a Vec container");
    }

    #[test]
    fn records_round_trip_through_bytes_and_payloads_stay_in_the_message() {
        let all = Arc::new(vec![1.5f32, -2.0, 3.25, 1e-8, 7.0]);
        let records = Unbatched(vec![
            Rec { id: 7, name: "abc".into(), values: Floats::view(&all, 1..4) },
            Rec { id: 9, name: String::new(), values: Floats::owned(vec![]) },
            Rec { id: 11, name: "odd".into(), values: Floats::owned(vec![4.0]) },
        ]);
        let mut bytes = Vec::new();
        records.into_bytes(&mut bytes);
        assert_eq!(bytes.len(), records.length_in_bytes());
        assert_eq!(bytes.len() % 8, 0);
        let back = Unbatched::<Rec>::from_bytes(timely::bytes::arc::BytesMut::from(bytes).freeze());
        assert_eq!(back.0, records.0);
        assert!(back.0.iter().all(|r| matches!(r.values, Floats::Received(_))));
        assert_eq!(*back.0[0].values.as_f32(), [-2.0, 3.25, 1e-8]);
        assert!(matches!(back.0[0].values.as_f32(), Cow::Borrowed(_)), "read in place");
        assert_eq!(back.0[2].values.len(), 1);
    }

    #[test]
    fn serde_carries_floats_as_bytes() {
        let values = Floats::owned(vec![0.5, -1.0]);
        let bytes = bincode::serialize(&values).unwrap();
        let back: Floats = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, values);
        assert!(
            bincode::deserialize::<Floats>(&bincode::serialize(&serde_bytes::Bytes::new(&[1, 2, 3])).unwrap()).is_err()
        );
    }
}
