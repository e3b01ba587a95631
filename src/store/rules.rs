//! What a change may do, decided once above the engines: an engine reads the stored
//! record, asks here, and writes what it is told. (What a change is, and its audit
//! record, are in `domain::change`.)

use crate::domain::image::{Image, ImageId, ImagePatch};
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
