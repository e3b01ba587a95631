//! The body of PUT /v3/image/{id}, applied to a stored image.
#![no_main]

use image_catalog::domain::image::{Image, ImagePatch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let providers = ["ec2".to_owned()];
    let Ok(stored) = Image::from_json(
        br#"{"id":"ami-1","provider":"ec2","remote_user":"ubuntu","name":"n"}"#,
        &providers,
    ) else {
        return;
    };
    match ImagePatch::from_json(body) {
        Ok(patch) => match patch.apply(&stored) {
            // An applied patch still makes a valid image of the same id.
            Ok(next) => {
                assert_eq!(next.id, stored.id);
                let again = Image::from_json(&next.to_json(), &providers);
                assert_eq!(again.as_ref(), Ok(&next));
            }
            Err(refusal) => assert!(!refusal.0.is_empty()),
        },
        Err(refusal) => assert!(!refusal.0.is_empty()),
    }
});
