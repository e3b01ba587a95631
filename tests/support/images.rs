//! Images, ids and patches for the store tests, on the default providers.

#![allow(dead_code)]

use image_catalog::domain::image::{Image, ImageId, ImagePatch};

pub const PROVIDERS: [&str; 3] = ["ec2", "openstack", "static"];

pub fn providers() -> Vec<String> {
    PROVIDERS.iter().map(|p| p.to_string()).collect()
}

pub fn image_of(id: &str, provider: &str) -> Image {
    let body = serde_json::json!({"id": id, "provider": provider, "remote_user": "u"});
    Image::from_json(body.to_string().as_bytes(), &providers()).unwrap()
}

/// An `ec2` image.
pub fn image(id: &str) -> Image {
    image_of(id, "ec2")
}

pub fn id(id: &str) -> ImageId {
    ImageId::parse(id).unwrap()
}

/// A patch that sets the name.
pub fn rename(name: &str) -> ImagePatch {
    ImagePatch::from_json(serde_json::json!({ "name": name }).to_string().as_bytes()).unwrap()
}
