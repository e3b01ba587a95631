//! config.toml, as `serve`, `check-config` and SIGHUP load it.
#![no_main]

use image_catalog::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &[u8]| {
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match Config::parse(text, std::path::Path::new("/etc/image-catalog")) {
        Ok(config) => {
            assert!(!config.providers.is_empty());
            for user in config.access.users() {
                assert!(user.password_hash.is_some() || user.token_sha256.is_some());
            }
        }
        Err(refusal) => assert!(!refusal.is_empty()),
    }
});
