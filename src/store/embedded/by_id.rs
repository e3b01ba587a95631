//! The audit trail by image (store format 3): for every audit record, a key of its
//! image's id and its seq, so that one image's history is one range of keys.

use super::*;

/// Ends an id in an index key: 0xFF is in no UTF-8 string, so one id's keys never
/// interleave with a longer id's.
const END_OF_ID: u8 = 0xFF;

/// The index key of image `id`'s record `seq`.
pub(super) fn by_id_key(id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.len() + 9);
    key.extend_from_slice(id.as_bytes());
    key.push(END_OF_ID);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The seq an index key names.
pub(super) fn seq_of_key(key: &[u8]) -> Result<u64, StoreError> {
    let seq = key
        .len()
        .checked_sub(8)
        .map(|at| &key[at..])
        .ok_or_else(|| StoreError::unreadable("an audit index key is too short"))?;
    u64_from_bytes(seq)
}

/// The index keys of image `id`'s records with a seq in `seqs`.
pub(super) fn by_id_range(id: &str, seqs: (Bound<u64>, Bound<u64>)) -> (Bound<IVec>, Bound<IVec>) {
    let key = |bound: Bound<u64>, open: u64| match bound {
        Bound::Included(seq) => Bound::Included(IVec::from(by_id_key(id, seq))),
        Bound::Excluded(seq) => Bound::Excluded(IVec::from(by_id_key(id, seq))),
        Bound::Unbounded => Bound::Included(IVec::from(by_id_key(id, open))),
    };
    (key(seqs.0, 0), key(seqs.1, u64::MAX))
}

/// The id a stored record names, for its index key.
pub(super) fn id_of_record(json: &[u8]) -> Result<String, StoreError> {
    #[derive(Deserialize)]
    struct Named {
        id: String,
    }
    serde_json::from_slice::<Named>(json)
        .map(|named| named.id)
        .map_err(StoreError::unreadable)
}

/// Format 2 had no index: build it from the trail, in batches.
pub(super) fn upgrade_from_2(audit: &Tree, by_id: &Tree) -> Result<(), Fault> {
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    for item in audit.iter() {
        let (key, value) = item?;
        let seq = u64_from_bytes(&key)?;
        batch.insert(by_id_key(&id_of_record(&value)?, seq), &[]);
        pending += 1;
        if pending == IMPORT_CHUNK {
            by_id.apply_batch(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    by_id.apply_batch(batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::RangeBounds;

    #[test]
    fn one_ids_keys_are_one_range_in_seq_order() {
        let range = by_id_range("a", (Bound::Unbounded, Bound::Unbounded));
        let inside = |key: Vec<u8>| range.contains(&IVec::from(key));
        assert!(inside(by_id_key("a", 1)) && inside(by_id_key("a", u64::MAX)));
        assert!(
            !inside(by_id_key("ab", 1)),
            "a longer id is not in the range"
        );
        assert!(!inside(by_id_key("", 7)));
        assert!(by_id_key("a", 2) < by_id_key("a", 10));
        assert_eq!(seq_of_key(&by_id_key("ïd", 42)).unwrap(), 42);
        let after = by_id_range("a", (Bound::Excluded(5), Bound::Unbounded));
        assert!(!after.contains(&IVec::from(by_id_key("a", 5))));
        assert!(after.contains(&IVec::from(by_id_key("a", 6))));
    }
}
