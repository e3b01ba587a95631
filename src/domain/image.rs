//! An image and its fields. Each field type can only hold a value that obeys docs/contract.md §1,
//! so handlers and the store never check again. No I/O here.

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use unicode_general_category::{GeneralCategory, get_general_category};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// Why some input was refused, as a sentence naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

fn invalid(message: impl Into<String>) -> ValidationError {
    ValidationError(message.into())
}

pub const ID_MAX_BYTES: usize = 255;
pub const REMOTE_USER_MAX_CHARS: usize = 64;
pub const NAME_MAX_CHARS: usize = 255;

/// `U+200B`: how a refusal names a character a person may not see.
fn code_point(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// A Unicode format character (general category Cf): zero-width spaces and joiners,
/// bidi controls, the soft hyphen, tag characters. Invisible, so an id holding one
/// looks exactly like another id.
fn is_format(c: char) -> bool {
    get_general_category(c) == GeneralCategory::Format
}

/// The invisible characters refused in `remote_user` and `name`: bidi embeddings,
/// overrides and isolates, which can make text read in another order than it is
/// stored, and the zero-width space, word joiner and byte-order mark. The zero-width
/// joiner and non-joiner stay allowed: scripts and emoji need them.
fn is_invisible_in_text(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// The characters `char::is_whitespace` or `char::is_control` accepts, as a regex class
/// body, so the OpenAPI patterns below say exactly what `parse` refuses.
const WHITESPACE_OR_CONTROL: &str =
    r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// The provider's own image id, chosen by the client. It travels in URL paths, so the
/// characters that would change a path's meaning are refused.
///
/// Two parses: [`ImageId::parse`] for the id of a new image, and the more lenient
/// [`ImageId::parse_existing`] for an id that may already be stored (a path, a marker,
/// a stored record), so that ids created before a rule was added stay readable,
/// updatable and deletable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageId(String);

impl ImageId {
    /// The id of an image being created: the rules of [`ImageId::parse_existing`], and
    /// no Unicode format character (category Cf), so that `ami-\u{200b}123` cannot sit
    /// beside `ami-123`.
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
        let id = ImageId::parse_existing(value)?;
        if let Some(c) = id.0.chars().find(|&c| is_format(c)) {
            return Err(invalid(format!(
                "id must not contain invisible format characters (found {})",
                code_point(c)
            )));
        }
        Ok(id)
    }

    /// The id of an image created through the API: the rules of [`ImageId::parse`],
    /// in Unicode normal form C, so that `café` typed precomposed and decomposed
    /// cannot be two images side by side. (An import takes [`ImageId::parse`]: ids
    /// stored before this rule must round-trip through export and import.)
    pub fn parse_new(value: impl Into<String>) -> Result<Self, ValidationError> {
        let id = ImageId::parse(value)?;
        if !unicode_normalization::is_nfc(&id.0) {
            return Err(invalid(
                "id must be in Unicode normal form C (NFC: composed characters, as most \
                 keyboards type them); normalize it first"
                    .to_owned(),
            ));
        }
        Ok(id)
    }

    /// An id that may name a stored image: 1 to 255 bytes, no whitespace, control
    /// characters or `/ ? # %`, not `.` or `..`.
    pub fn parse_existing(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        if value.is_empty() || value.len() > ID_MAX_BYTES {
            return Err(invalid(format!(
                "id must be 1 to {ID_MAX_BYTES} bytes long, got {} bytes",
                value.len()
            )));
        }
        if value == "." || value == ".." {
            return Err(invalid(format!("id must not be '{value}'")));
        }
        if let Some(c) = value
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%'))
        {
            return Err(invalid(format!(
                "id must not contain whitespace, control characters or any of / ? # % (found {c:?})"
            )));
        }
        Ok(ImageId(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How stored records read back: leniently (see [`ImageId::parse_existing`]).
impl TryFrom<String> for ImageId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ImageId::parse_existing(value)
    }
}

impl From<ImageId> for String {
    fn from(id: ImageId) -> Self {
        id.0
    }
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One of the providers that config lists.
///
/// Deserializing does not consult the list: stored records were checked when they
/// were written, and one whose provider was later dropped from config must still read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Provider(String);

impl Provider {
    pub fn parse(value: &str, allowed: &[String]) -> Result<Self, ValidationError> {
        if allowed.iter().any(|p| p == value) {
            Ok(Provider(value.to_owned()))
        } else {
            Err(invalid(format!(
                "provider '{}' is not one of the configured providers: {}",
                value.escape_debug(),
                allowed.join(", ")
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The SSH user to log in as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RemoteUser(String);

impl RemoteUser {
    /// A remote_user being written: the rules of [`RemoteUser::parse_existing`], and
    /// none of the invisible characters of `is_invisible_in_text`.
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
        let user = RemoteUser::parse_existing(value)?;
        if let Some(c) = user.0.chars().find(|&c| is_invisible_in_text(c)) {
            return Err(invalid(format!(
                "remote_user must not contain invisible characters (found {})",
                code_point(c)
            )));
        }
        Ok(user)
    }

    /// A remote_user as it may already be stored.
    fn parse_existing(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let chars = value.chars().count();
        if chars == 0 || chars > REMOTE_USER_MAX_CHARS {
            return Err(invalid(format!(
                "remote_user must be 1 to {REMOTE_USER_MAX_CHARS} characters long, got {chars}"
            )));
        }
        if let Some(c) = value
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == ':')
        {
            return Err(invalid(format!(
                "remote_user must not contain whitespace, control characters or ':' (found {c:?})"
            )));
        }
        Ok(RemoteUser(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RemoteUser {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        RemoteUser::parse_existing(value)
    }
}

impl From<RemoteUser> for String {
    fn from(user: RemoteUser) -> Self {
        user.0
    }
}

/// A human name for the image; may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);

impl ImageName {
    /// A name being written: the rules of [`ImageName::parse_existing`], and none of
    /// the invisible characters of `is_invisible_in_text`.
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
        let name = ImageName::parse_existing(value)?;
        if let Some(c) = name.0.chars().find(|&c| is_invisible_in_text(c)) {
            return Err(invalid(format!(
                "name must not contain invisible characters (found {})",
                code_point(c)
            )));
        }
        Ok(name)
    }

    /// A name as it may already be stored.
    fn parse_existing(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let chars = value.chars().count();
        if chars > NAME_MAX_CHARS {
            return Err(invalid(format!(
                "name must be at most {NAME_MAX_CHARS} characters long, got {chars}"
            )));
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Err(invalid(format!(
                "name must not contain control characters (found {c:?})"
            )));
        }
        Ok(ImageName(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ImageName::parse_existing(value)
    }
}

impl From<ImageName> for String {
    fn from(name: ImageName) -> Self {
        name.0
    }
}

fn string_schema(
    description: &str,
    min: Option<usize>,
    max: Option<usize>,
    pattern: Option<String>,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(min)
        .max_length(max)
        .pattern(pattern)
        .into()
}

/// The format characters (Cf) of the Basic Multilingual Plane as a regex class body.
/// The few above it are left out: `\u{...}` escapes differ between regex dialects.
fn bmp_format_characters() -> String {
    let mut class = String::new();
    let mut chars = ('\u{0}'..='\u{ffff}').filter(|&c| is_format(c)).peekable();
    while let Some(first) = chars.next() {
        let mut last = first;
        while let Some(&next) = chars.peek() {
            if u32::from(next) != u32::from(last) + 1 {
                break;
            }
            last = next;
            chars.next();
        }
        class.push_str(&format!("\\u{:04x}", u32::from(first)));
        if last != first {
            class.push_str(&format!("-\\u{:04x}", u32::from(last)));
        }
    }
    class
}

/// The invisible characters of `is_invisible_in_text`, as a regex class body.
const INVISIBLE_IN_TEXT: &str = r"\u200b\u202a-\u202e\u2060\u2066-\u2069\ufeff";

impl PartialSchema for ImageId {
    fn schema() -> RefOr<Schema> {
        let refused = format!("{WHITESPACE_OR_CONTROL}{}/?#%", bmp_format_characters());
        let allowed = format!("[^{refused}]");
        let allowed_but_dot = format!("[^{refused}.]");
        string_schema(
            "The provider's image id, chosen by the client: 1 to 255 bytes of UTF-8, no \
             whitespace, control or invisible format (Unicode Cf) characters, none of \
             / ? # %, not . or ..",
            Some(1),
            Some(ID_MAX_BYTES),
            // At least one character that is not a dot, or three dots and more.
            Some(format!(
                r"^(?:{allowed}*{allowed_but_dot}{allowed}*|\.{{3,}})$"
            )),
        )
    }
}
impl ToSchema for ImageId {}

impl PartialSchema for Provider {
    fn schema() -> RefOr<Schema> {
        // The allowed values come from config; `openapi::document` lists them.
        string_schema("One of the providers that config lists.", None, None, None)
    }
}
impl ToSchema for Provider {}

impl PartialSchema for RemoteUser {
    fn schema() -> RefOr<Schema> {
        string_schema(
            "The SSH user to log in as: 1 to 64 characters, no whitespace, control \
             characters, bidi controls, zero-width spaces or ':'",
            Some(1),
            Some(REMOTE_USER_MAX_CHARS),
            Some(format!("^[^{WHITESPACE_OR_CONTROL}{INVISIBLE_IN_TEXT}:]*$")),
        )
    }
}
impl ToSchema for RemoteUser {}

impl PartialSchema for ImageName {
    fn schema() -> RefOr<Schema> {
        string_schema(
            "A human name: 0 to 255 characters, no control characters, bidi controls or \
             zero-width spaces",
            Some(0),
            Some(NAME_MAX_CHARS),
            Some(format!(r"^[^\x00-\x1f\x7f-\x9f{INVISIBLE_IN_TEXT}]*$")),
        )
    }
}
impl ToSchema for ImageName {}

/// An image exactly as the API shows it; the field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub id: ImageId,
    pub provider: Provider,
    pub remote_user: RemoteUser,
    pub name: ImageName,
}

const IMAGE_FIELDS: &[&str] = &["id", "provider", "remote_user", "name"];

impl Image {
    /// Parses a create body: `id`, `provider` and `remote_user` required, `name`
    /// optional; the id by [`ImageId::parse_new`].
    pub fn from_json(body: &[u8], providers: &[String]) -> Result<Image, ValidationError> {
        Image::from_json_with(body, providers, ImageId::parse_new)
    }

    /// Parses an import line as [`Image::from_json`] does, but with the id rules of
    /// [`ImageId::parse`]: whatever export writes, import takes back.
    pub fn from_import_json(body: &[u8], providers: &[String]) -> Result<Image, ValidationError> {
        Image::from_json_with(body, providers, ImageId::parse)
    }

    fn from_json_with(
        body: &[u8],
        providers: &[String],
        parse_id: fn(String) -> Result<ImageId, ValidationError>,
    ) -> Result<Image, ValidationError> {
        let mut fields = JsonFields::parse(body, IMAGE_FIELDS)?;
        let id = parse_id(fields.required("id")?)?;
        let provider = Provider::parse(&fields.required("provider")?, providers)?;
        let remote_user = RemoteUser::parse(fields.required("remote_user")?)?;
        let name = match fields.optional("name")? {
            Some(name) => ImageName::parse(name)?,
            None => ImageName::default(),
        };
        Ok(Image {
            id,
            provider,
            remote_user,
            name,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The body of an update: what to change, plus the `id` and `provider` that clients
/// sending the whole image repeat (they must equal the stored ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePatch {
    id: Option<String>,
    provider: Option<String>,
    remote_user: Option<RemoteUser>,
    name: Option<ImageName>,
}

/// A reference to a field type's schema among the document's components, where
/// `openapi::document` completes it (the providers' enum).
fn schema_ref<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()))
}

/// The create body: an [`Image`] whose `name` may be left out.
pub struct NewImage;

impl PartialSchema for NewImage {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("id", schema_ref::<ImageId>())
            .property("provider", schema_ref::<Provider>())
            .property("remote_user", schema_ref::<RemoteUser>())
            .property("name", schema_ref::<ImageName>())
            .required("id")
            .required("provider")
            .required("remote_user")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}
impl ToSchema for NewImage {}

impl PartialSchema for ImagePatch {
    fn schema() -> RefOr<Schema> {
        // Clients may also repeat `id` and `provider` unchanged; the schema leaves
        // them out so that generated bodies do not try to change them.
        ObjectBuilder::new()
            .description(Some(
                "remote_user and/or name. The whole image may be sent back as long as id \
                 and provider equal the stored ones.",
            ))
            .property("remote_user", schema_ref::<RemoteUser>())
            .property("name", schema_ref::<ImageName>())
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .min_properties(Some(1))
            .into()
    }
}
impl ToSchema for ImagePatch {}

impl ImagePatch {
    pub fn from_json(body: &[u8]) -> Result<ImagePatch, ValidationError> {
        let mut fields = JsonFields::parse(body, IMAGE_FIELDS)?;
        let patch = ImagePatch {
            id: fields.optional("id")?,
            provider: fields.optional("provider")?,
            remote_user: fields
                .optional("remote_user")?
                .map(RemoteUser::parse)
                .transpose()?,
            name: fields.optional("name")?.map(ImageName::parse).transpose()?,
        };
        if patch.remote_user.is_none() && patch.name.is_none() {
            return Err(invalid(
                "the body must contain remote_user and/or name, the fields an update can change",
            ));
        }
        Ok(patch)
    }

    /// The image after this patch, or why the patch cannot apply to it.
    pub fn apply(&self, current: &Image) -> Result<Image, ValidationError> {
        if let Some(id) = &self.id
            && id != current.id.as_str()
        {
            return Err(invalid(format!(
                "field 'id' cannot be changed (this image's id is '{}')",
                current.id
            )));
        }
        if let Some(provider) = &self.provider
            && provider != current.provider.as_str()
        {
            return Err(invalid(format!(
                "field 'provider' cannot be changed (this image's provider is '{}')",
                current.provider.as_str()
            )));
        }
        let mut next = current.clone();
        if let Some(remote_user) = &self.remote_user {
            next.remote_user = remote_user.clone();
        }
        if let Some(name) = &self.name {
            next.name = name.clone();
        }
        Ok(next)
    }
}

/// A JSON object body whose members are all strings, read field by field so that every
/// refusal names the field concerned.
struct JsonFields(Map<String, Value>);

impl JsonFields {
    fn parse(body: &[u8], allowed: &[&str]) -> Result<Self, ValidationError> {
        let parsed: ParsedBody = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the body is not valid JSON: {e}")))?;
        let map = match parsed {
            ParsedBody::Object(map) => map,
            ParsedBody::DuplicateKey(key) => {
                return Err(invalid(format!(
                    "field '{}' is given more than once; send each field once",
                    key.escape_debug()
                )));
            }
            ParsedBody::NotObject(kind) => {
                return Err(invalid(format!(
                    "the body must be a JSON object, got {kind}"
                )));
            }
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(invalid(format!(
                "unknown field '{}'; the fields are: {}",
                unknown.escape_debug(),
                allowed.join(", ")
            )));
        }
        Ok(JsonFields(map))
    }

    fn optional(&mut self, field: &str) -> Result<Option<String>, ValidationError> {
        match self.0.remove(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(invalid(format!(
                "field '{field}' must be a string, got {}",
                json_kind(&other)
            ))),
        }
    }

    fn required(&mut self, field: &str) -> Result<String, ValidationError> {
        self.optional(field)?
            .ok_or_else(|| invalid(format!("field '{field}' is required")))
    }
}

/// A request body as read in one pass: an object's members, each key at most once
/// (serde_json's own map would keep the last of two silently), or what it is instead.
enum ParsedBody {
    Object(Map<String, Value>),
    /// An object that gives this key more than once (the first such key).
    DuplicateKey(String),
    /// Not an object: what kind of JSON it is, as [`json_kind`] says it.
    NotObject(&'static str),
}

impl<'de> Deserialize<'de> for ParsedBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ParsedBodyVisitor)
    }
}

struct ParsedBodyVisitor;

impl<'de> Visitor<'de> for ParsedBodyVisitor {
    type Value = ParsedBody;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<ParsedBody, A::Error> {
        let mut map = Map::new();
        let mut duplicate = None;
        while let Some(key) = members.next_key::<String>()? {
            if duplicate.is_some() || map.contains_key(&key) {
                // Read on, so that a body which is not JSON at all is still told so.
                members.next_value::<IgnoredAny>()?;
                duplicate.get_or_insert(key);
            } else {
                let value = members.next_value::<Value>()?;
                map.insert(key, value);
            }
        }
        Ok(match duplicate {
            Some(key) => ParsedBody::DuplicateKey(key),
            None => ParsedBody::Object(map),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<ParsedBody, A::Error> {
        while items.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ParsedBody::NotObject("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<ParsedBody, E> {
        Ok(ParsedBody::NotObject("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<ParsedBody, E> {
        Ok(ParsedBody::NotObject("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<ParsedBody, E> {
        Ok(ParsedBody::NotObject("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<ParsedBody, E> {
        Ok(ParsedBody::NotObject("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<ParsedBody, E> {
        Ok(ParsedBody::NotObject("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<ParsedBody, E> {
        Ok(ParsedBody::NotObject("null"))
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers() -> Vec<String> {
        vec!["ec2".into(), "openstack".into(), "static".into()]
    }

    #[test]
    fn id_length_limits() {
        assert!(ImageId::parse("").is_err());
        // Normal form C for new ids; the decomposed form stays readable and importable.
        let composed = "caf\u{e9}";
        let decomposed = "cafe\u{301}";
        assert!(ImageId::parse_new(composed).is_ok());
        let err = ImageId::parse_new(decomposed).unwrap_err().to_string();
        assert!(err.contains("normal form C"), "{err}");
        assert!(ImageId::parse(decomposed).is_ok());
        assert!(ImageId::parse_existing(decomposed).is_ok());
        let line = format!(r#"{{"id":"{decomposed}","provider":"ec2","remote_user":"u"}}"#);
        assert!(Image::from_json(line.as_bytes(), &providers()).is_err());
        assert!(Image::from_import_json(line.as_bytes(), &providers()).is_ok());
        assert!(ImageId::parse("a").is_ok());
        assert!(ImageId::parse("a".repeat(255)).is_ok());
        assert!(ImageId::parse("a".repeat(256)).is_err());
        // The limit is in bytes: 127 two-byte characters fit, 128 do not.
        assert!(ImageId::parse("é".repeat(127)).is_ok());
        assert!(ImageId::parse("é".repeat(128)).is_err());
    }

    #[test]
    fn id_forbidden_characters() {
        for bad in [
            "a b", "a\tb", "a\nb", "a\u{7f}", "a/b", "a?b", "a#b", "a%b", ".", "..", "\u{a0}",
        ] {
            let err = ImageId::parse(bad).expect_err(bad);
            assert!(err.0.starts_with("id "), "{err}");
        }
        for good in [
            "ami-0abc",
            "...",
            ".hidden",
            "ubuntu:22.04",
            "イメージ",
            "a.b_c-d~e",
        ] {
            assert!(ImageId::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn remote_user_limits() {
        assert!(RemoteUser::parse("").is_err());
        assert!(RemoteUser::parse("u").is_ok());
        assert!(RemoteUser::parse("u".repeat(64)).is_ok());
        assert!(RemoteUser::parse("u".repeat(65)).is_err());
        // Characters, not bytes.
        assert!(RemoteUser::parse("ü".repeat(64)).is_ok());
        for bad in ["a b", "a:b", "a\u{0}", "a\r"] {
            let err = RemoteUser::parse(bad).expect_err(bad);
            assert!(err.0.starts_with("remote_user "), "{err}");
        }
    }

    #[test]
    fn name_limits() {
        assert!(ImageName::parse("").is_ok());
        assert!(ImageName::parse("n".repeat(255)).is_ok());
        assert!(ImageName::parse("ñ".repeat(255)).is_ok());
        assert!(ImageName::parse("n".repeat(256)).is_err());
        assert!(ImageName::parse("Ubuntu 22.04 LTS: base").is_ok());
        assert!(ImageName::parse("a\nb").is_err());
    }

    #[test]
    fn new_ids_refuse_format_characters_existing_ids_keep_them() {
        // Every Cf character, including ones outside the BMP and the soft hyphen.
        for c in [
            '\u{ad}',
            '\u{600}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{202e}',
            '\u{2060}',
            '\u{2066}',
            '\u{feff}',
            '\u{110bd}',
            '\u{e0001}',
            '\u{e007f}',
        ] {
            let id = format!("ami-{c}123");
            let err = ImageId::parse(id.as_str()).expect_err(&id);
            let expected = format!("U+{:04X}", u32::from(c));
            assert!(
                err.0.starts_with("id ") && err.0.contains(&expected),
                "{err}"
            );
            assert_eq!(ImageId::parse_existing(id.as_str()).unwrap().as_str(), id);
        }
        // Visible neighbours of those characters are fine, and the other rules apply
        // to existing ids as well.
        for good in ["ami-123", "a\u{2010}b", "\u{1f600}", "\u{5d0}\u{5d1}"] {
            assert!(ImageId::parse(good).is_ok(), "{good}");
        }
        for bad in ["a b", "a/b", "..", ""] {
            assert!(ImageId::parse_existing(bad).is_err(), "{bad}");
        }
        // Stored records read back leniently.
        let stored: ImageId = serde_json::from_str("\"ami-\\u200b123\"").unwrap();
        assert_eq!(stored.as_str(), "ami-\u{200b}123");
    }

    #[test]
    fn text_fields_refuse_bidi_controls_and_zero_width_spaces() {
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200b}', '\u{2060}', '\u{feff}',
        ] {
            let value = format!("ub{c}untu");
            let expected = format!("U+{:04X}", u32::from(c));
            let err = RemoteUser::parse(value.as_str()).expect_err(&value);
            assert!(
                err.0.starts_with("remote_user ") && err.0.contains(&expected),
                "{err}"
            );
            let err = ImageName::parse(value.as_str()).expect_err(&value);
            assert!(
                err.0.starts_with("name ") && err.0.contains(&expected),
                "{err}"
            );
            // What is already stored still reads.
            let stored = serde_json::to_string(&value).unwrap();
            assert!(serde_json::from_str::<RemoteUser>(&stored).is_ok());
            assert!(serde_json::from_str::<ImageName>(&stored).is_ok());
        }
        // The joiners that scripts and emoji need, and the neighbours of the refused
        // ranges, stay allowed.
        for good in [
            "\u{1f468}\u{200d}\u{1f4bb}",
            "\u{915}\u{94d}\u{200c}\u{937}",
            "a\u{2029}b",
            "a\u{2065}b",
            "a\u{206a}b",
            "a\u{2061}b",
        ] {
            let remote_user = good.replace('\u{2029}', "-");
            assert!(
                RemoteUser::parse(remote_user.as_str()).is_ok(),
                "{remote_user:?}"
            );
            assert!(ImageName::parse(remote_user.as_str()).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn provider_must_be_configured() {
        assert!(Provider::parse("ec2", &providers()).is_ok());
        let err = Provider::parse("gce", &providers()).unwrap_err();
        assert!(err.0.contains("'gce'") && err.0.contains("ec2, openstack, static"));
    }

    #[test]
    fn create_body_round_trips() {
        let body = br#"{"id":"ami-1","provider":"ec2","remote_user":"ubuntu","name":"Ubuntu"}"#;
        let image = Image::from_json(body, &providers()).unwrap();
        assert_eq!(image.to_json(), body.to_vec());
    }

    #[test]
    fn create_body_name_defaults_to_empty() {
        let image = Image::from_json(
            br#"{"id":"a","provider":"static","remote_user":"root"}"#,
            &providers(),
        )
        .unwrap();
        assert_eq!(image.name.as_str(), "");
    }

    #[test]
    fn create_body_errors_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not valid JSON"),
            (b"[1]", "must be a JSON object, got an array"),
            (
                br#"{"id":"a","provider":"ec2","remote_user":"u","extra":1}"#,
                "unknown field 'extra'",
            ),
            (
                br#"{"provider":"ec2","remote_user":"u"}"#,
                "field 'id' is required",
            ),
            (
                br#"{"id":5,"provider":"ec2","remote_user":"u"}"#,
                "field 'id' must be a string, got a number",
            ),
            (
                br#"{"id":"a","provider":"ec2","remote_user":"u","name":null}"#,
                "field 'name' must be a string, got null",
            ),
            (
                br#"{"id":"a","provider":"ec2","remote_user":"u","id":"b"}"#,
                "field 'id' is given more than once",
            ),
            (
                br#"{"id":"a","provider":"ec2","remote_user":"u","name":"x","name":"x"}"#,
                "field 'name' is given more than once",
            ),
            (br#"{"id":"a","id":"b""#, "not valid JSON"),
            (b"null", "must be a JSON object, got null"),
            (b"\"s\"", "must be a JSON object, got a string"),
            (b"1.5", "must be a JSON object, got a number"),
            (b"true", "must be a JSON object, got a boolean"),
        ];
        for (body, expected) in cases {
            let err = Image::from_json(body, &providers()).unwrap_err();
            assert!(err.0.contains(expected), "{err} should contain {expected}");
        }
    }

    #[test]
    fn patch_rules() {
        let current = Image::from_json(
            br#"{"id":"a","provider":"ec2","remote_user":"u","name":"n"}"#,
            &providers(),
        )
        .unwrap();
        assert!(ImagePatch::from_json(br#"{}"#).is_err());
        let err = ImagePatch::from_json(br#"{"name":"a","name":"b"}"#).unwrap_err();
        assert!(
            err.0.contains("field 'name' is given more than once"),
            "{err}"
        );
        // A key repeated inside a nested value is that field's wrong type, no more.
        let err = ImagePatch::from_json(br#"{"name":{"a":1,"a":2}}"#).unwrap_err();
        assert!(err.0.contains("'name' must be a string"), "{err}");
        assert!(ImagePatch::from_json(br#"{"id":"a","provider":"ec2"}"#).is_err());

        let patch = ImagePatch::from_json(br#"{"name":"new"}"#).unwrap();
        let next = patch.apply(&current).unwrap();
        assert_eq!(next.name.as_str(), "new");
        assert_eq!(next.remote_user.as_str(), "u");

        let same = ImagePatch::from_json(br#"{"id":"a","provider":"ec2","remote_user":"v"}"#);
        assert_eq!(
            same.unwrap().apply(&current).unwrap().remote_user.as_str(),
            "v"
        );

        let err = ImagePatch::from_json(br#"{"id":"b","name":"x"}"#)
            .unwrap()
            .apply(&current)
            .unwrap_err();
        assert!(err.0.contains("'id' cannot be changed"));
        let err = ImagePatch::from_json(br#"{"provider":"static","name":"x"}"#)
            .unwrap()
            .apply(&current)
            .unwrap_err();
        assert!(err.0.contains("'provider' cannot be changed"));
    }

    /// Properties over generated input: what parses serialises back to the same JSON,
    /// and every refusal names the field at fault.
    mod properties {
        use proptest::prelude::*;
        use serde_json::{Value, json};

        use super::*;

        const FIELDS: [&str; 4] = ["id", "provider", "remote_user", "name"];

        /// Characters that sit on the edges of the field rules, mixed with any at all.
        fn edgy_char() -> impl Strategy<Value = char> {
            prop_oneof![
                4 => prop::char::range('a', 'z'),
                1 => any::<char>(),
                1 => prop::sample::select(vec![
                    ' ', '\t', '\n', '\u{0}', '\u{7f}', '\u{a0}', '\u{2028}', ':', '/', '?',
                    '#', '%', '.', 'é', 'イ', '😀',
                ]),
            ]
        }

        /// Mostly plain text (which every field accepts), else short strings of edge
        /// characters, else strings around the length limits.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::collection::vec(prop::char::range('a', 'z'), 1..20)
                    .prop_map(String::from_iter),
                3 => prop::collection::vec(edgy_char(), 0..12).prop_map(String::from_iter),
                1 => (250usize..=260, prop::sample::select(vec!["a", "é"]))
                    .prop_map(|(n, c)| c.repeat(n)),
                1 => (60usize..=70).prop_map(|n| "u".repeat(n)),
            ]
        }

        /// Any JSON a client could put in a field, strings most often.
        fn field_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                6 => text().prop_map(Value::String),
                1 => Just(Value::Null),
                1 => any::<bool>().prop_map(Value::Bool),
                1 => any::<i64>().prop_map(Value::from),
                1 => Just(json!(["ec2"])),
                1 => Just(json!({"id": "a"})),
            ]
        }

        fn provider_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                3 => prop::sample::select(vec!["ec2", "openstack", "static"])
                    .prop_map(Value::from),
                1 => field_value(),
            ]
        }

        /// A body with any subset of the fields, sometimes an unknown one too.
        fn body() -> impl Strategy<Value = Value> {
            (
                prop::option::weighted(0.9, field_value()),
                prop::option::weighted(0.9, provider_value()),
                prop::option::weighted(0.9, field_value()),
                prop::option::weighted(0.7, field_value()),
                prop::option::weighted(0.05, field_value()),
            )
                .prop_map(|(id, provider, remote_user, name, unknown)| {
                    let mut object = serde_json::Map::new();
                    for (key, value) in [
                        ("id", id),
                        ("provider", provider),
                        ("remote_user", remote_user),
                        ("name", name),
                        ("extra", unknown),
                    ] {
                        if let Some(value) = value {
                            object.insert(key.to_owned(), value);
                        }
                    }
                    Value::Object(object)
                })
        }

        fn names_field(message: &str, field: &str) -> bool {
            message.starts_with(&format!("{field} ")) || message.contains(&format!("'{field}'"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn field_types_keep_what_they_accept_and_name_themselves_when_refusing(
                value in text(),
            ) {
                match ImageId::parse(value.clone()) {
                    Ok(id) => prop_assert_eq!(id.as_str(), value.as_str()),
                    Err(e) => prop_assert!(e.0.starts_with("id "), "{}", e),
                }
                match RemoteUser::parse(value.clone()) {
                    Ok(user) => prop_assert_eq!(user.as_str(), value.as_str()),
                    Err(e) => prop_assert!(e.0.starts_with("remote_user "), "{}", e),
                }
                match ImageName::parse(value.clone()) {
                    Ok(name) => prop_assert_eq!(name.as_str(), value.as_str()),
                    Err(e) => prop_assert!(e.0.starts_with("name "), "{}", e),
                }
                match Provider::parse(&value, &providers()) {
                    Ok(provider) => prop_assert_eq!(provider.as_str(), value.as_str()),
                    Err(e) => prop_assert!(e.0.starts_with("provider "), "{}", e),
                }
            }

            #[test]
            fn what_parses_serialises_back_to_the_same_json(body in body()) {
                let bytes = serde_json::to_vec(&body).unwrap();
                match Image::from_json(&bytes, &providers()) {
                    Ok(image) => {
                        let mut expected = body.clone();
                        expected
                            .as_object_mut()
                            .unwrap()
                            .entry("name")
                            .or_insert(json!(""));
                        let written: Value = serde_json::from_slice(&image.to_json()).unwrap();
                        prop_assert_eq!(written, expected);
                        // And the stored form reads back as the same image.
                        let stored: Image = serde_json::from_slice(&image.to_json()).unwrap();
                        prop_assert_eq!(stored, image);
                    }
                    Err(e) => {
                        prop_assert!(
                            FIELDS.iter().any(|f| names_field(&e.0, f))
                                || e.0.contains("unknown field 'extra'"),
                            "{}", e
                        );
                    }
                }
            }

            #[test]
            fn a_refusal_names_the_one_bad_field(
                field in prop::sample::select(FIELDS.to_vec()),
                value in field_value(),
            ) {
                let mut body = json!({
                    "id": "ami-1", "provider": "ec2", "remote_user": "ubuntu", "name": "n"
                });
                body[field] = value;
                let bytes = serde_json::to_vec(&body).unwrap();
                if let Err(e) = Image::from_json(&bytes, &providers()) {
                    prop_assert!(!e.0.is_empty());
                    prop_assert!(names_field(&e.0, field), "{} should name {}", e, field);
                }
            }

            #[test]
            fn an_update_applies_what_it_says_or_names_the_field(body in body()) {
                let stored = Image::from_json(
                    br#"{"id":"ami-1","provider":"ec2","remote_user":"ubuntu","name":"n"}"#,
                    &providers(),
                )
                .unwrap();
                let bytes = serde_json::to_vec(&body).unwrap();
                let applied = ImagePatch::from_json(&bytes).and_then(|p| p.apply(&stored));
                match applied {
                    Ok(next) => {
                        let written: Value = serde_json::from_slice(&next.to_json()).unwrap();
                        for field in FIELDS {
                            let expected = body.get(field).unwrap_or(&written[field]);
                            prop_assert_eq!(&written[field], expected, "{}", field);
                        }
                        prop_assert_eq!(next.id, stored.id);
                    }
                    Err(e) => prop_assert!(
                        FIELDS.iter().any(|f| names_field(&e.0, f))
                            || e.0.contains("remote_user and/or name")
                            || e.0.contains("unknown field 'extra'"),
                        "{}", e
                    ),
                }
            }
        }
    }
}
