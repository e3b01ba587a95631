//! The body of POST /v3/image (and each line of an import).
#![no_main]

use image_catalog::domain::image::Image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let providers = [
        "ec2".to_owned(),
        "openstack".to_owned(),
        "static".to_owned(),
    ];
    match Image::from_json(body, &providers) {
        // What parses serialises to JSON that parses back to the same image.
        Ok(image) => {
            let again = Image::from_json(&image.to_json(), &providers);
            assert_eq!(again.as_ref(), Ok(&image));
        }
        Err(refusal) => assert!(!refusal.0.is_empty()),
    }
});
