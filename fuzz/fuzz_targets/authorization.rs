//! The Authorization header.
#![no_main]

use image_catalog::auth::Credentials;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    if let Ok(credentials) = Credentials::parse(value) {
        // Debug is what could reach a log: it never shows the secret.
        let shown = format!("{credentials:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
});
