//! What a change may do, decided once above the engines: an engine reads the stored
//! record, asks here, and writes what it is told. (What a change is, and its audit
//! record, are in `domain::change`.)

use crate::domain::image::{Image, ImageId, ImagePatch, ValidationError};
use crate::store::{Precondition, Record, StoreError};

/// The stored record a conditional change applies to: it must exist, and meet the
/// precondition (`If-Match`) if there is one. `stored` is the image's JSON, if any.
pub fn precondition_met(
    id: &ImageId,
    stored: Option<&[u8]>,
    precondition: &Option<Precondition>,
) -> Result<Record, StoreError> {
    let Some(stored) = stored else {
        return Err(StoreError::NotFound(id.to_string()));
    };
    let record = Record::from_slice(stored);
    if let Some(Precondition::EtagIn(tags)) = precondition
        && !tags.contains(&record.etag())
    {
        return Err(StoreError::PreconditionFailed(id.to_string()));
    }
    Ok(record)
}

/// The image an update makes of `current`: `id` and `provider` kept, the patch's
/// fields changed; a patch that would change `id` or `provider` is refused.
pub fn updated(current: &Record, patch: &ImagePatch) -> Result<Image, StoreError> {
    patch.apply(&current.image()?).map_err(StoreError::Invalid)
}

/// An imported trail, spanning seqs `low` to `high`, must lie above every seq the
/// store has given (`highest`): a follower of the feed resumes after the highest seq it
/// saw, and would never see records moved in below it.
pub fn trail_fits(low: u64, high: u64, highest: u64) -> Result<(), StoreError> {
    if low == 0 || high >= i64::MAX as u64 {
        let seq = if low == 0 { low } else { high };
        return Err(StoreError::Invalid(ValidationError(format!(
            "audit seq {seq} is out of range"
        ))));
    }
    if low <= highest {
        return Err(StoreError::Invalid(ValidationError(format!(
            "the imported audit trail spans seqs {low} to {high}, but this store has given \
             seqs up to {highest}: an imported trail must lie above them, or a client \
             following the feed (GET /v3/audit?after=, /v3/changes) would miss it; import \
             into a new store, or without the trail"
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Vec<u8> {
        br#"{"id":"a","provider":"ec2","remote_user":"u","name":"n"}"#.to_vec()
    }

    #[test]
    fn a_precondition_needs_the_image_and_a_matching_etag() {
        let id = ImageId::parse("a").unwrap();
        let json = stored();
        let tag = Record::from_slice(&json).etag();
        assert!(matches!(
            precondition_met(&id, None, &None),
            Err(StoreError::NotFound(_))
        ));
        assert!(precondition_met(&id, Some(&json), &None).is_ok());
        assert!(precondition_met(&id, Some(&json), &Some(Precondition::Exists)).is_ok());
        let matching = Some(Precondition::EtagIn(vec!["\"x\"".into(), tag]));
        assert!(precondition_met(&id, Some(&json), &matching).is_ok());
        let other = Some(Precondition::EtagIn(vec!["\"x\"".into()]));
        assert!(matches!(
            precondition_met(&id, Some(&json), &other),
            Err(StoreError::PreconditionFailed(_))
        ));
    }

    #[test]
    fn an_imported_trail_lies_above_every_seq_given() {
        assert!(trail_fits(1, 9, 0).is_ok());
        assert!(trail_fits(11, 20, 10).is_ok());
        let below = trail_fits(5, 20, 10).unwrap_err().to_string();
        assert!(
            below.contains("up to 10") && below.contains("5 to 20"),
            "{below}"
        );
        assert!(trail_fits(0, 3, 0).is_err());
        assert!(trail_fits(1, i64::MAX as u64, 0).is_err());
    }

    #[test]
    fn an_update_keeps_id_and_provider() {
        let current = Record::from_slice(&stored());
        let patch = ImagePatch::from_json(br#"{"name":"m"}"#).unwrap();
        let next = updated(&current, &patch).unwrap();
        assert_eq!((next.id.as_str(), next.name.as_str()), ("a", "m"));
        let moved = ImagePatch::from_json(br#"{"provider":"static","name":"m"}"#).unwrap();
        assert!(matches!(
            updated(&current, &moved),
            Err(StoreError::Invalid(_))
        ));
    }
}
