//! What a change to the catalog is, and what the audit trail records of it. No I/O:
//! both stores apply these.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::image::{Image, ImageId, ImagePatch};

/// The condition of a compare-and-swap (`If-Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `*`: the image must exist.
    Exists,
    /// The image's current ETag must be one of these (strong comparison).
    EtagIn(Vec<String>),
}

/// A change to the catalog.
#[derive(Debug, Clone)]
pub enum Change {
    Create(Image),
    Update {
        id: ImageId,
        patch: ImagePatch,
        precondition: Option<Precondition>,
    },
    Delete {
        id: ImageId,
        precondition: Option<Precondition>,
    },
}

impl Change {
    pub fn method(&self) -> &'static str {
        match self {
            Change::Create(_) => "POST",
            Change::Update { .. } => "PUT",
            Change::Delete { .. } => "DELETE",
        }
    }

    pub fn id(&self) -> &ImageId {
        match self {
            Change::Create(image) => &image.id,
            Change::Update { id, .. } | Change::Delete { id, .. } => id,
        }
    }
}

/// One line of the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: String,
    pub user: String,
    pub method: String,
    pub id: String,
    pub status: u16,
}

/// The strong ETag of a stored record: its SHA-256, first 16 bytes in hex, quoted.
/// Equal bytes, equal tag, on every store.
pub fn etag_of(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = sha256(bytes);
    // Written by hand: `format!` with `hex::encode` was 2% of a cached GET.
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for byte in &digest[..16] {
        tag.push(HEX[usize::from(byte >> 4)] as char);
        tag.push(HEX[usize::from(byte & 0xf)] as char);
    }
    tag.push('"');
    tag
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
