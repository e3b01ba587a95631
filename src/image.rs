//! An image and its fields. Each field type can only hold a value that obeys SPEC §1,
//! so handlers and the store never check again. No I/O here.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
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

/// The characters `char::is_whitespace` or `char::is_control` accepts, as a regex class
/// body, so the OpenAPI patterns below say exactly what `parse` refuses.
const WHITESPACE_OR_CONTROL: &str =
    r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// The provider's own image id, chosen by the client. It travels in URL paths, so the
/// characters that would change a path's meaning are refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageId(String);

impl ImageId {
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
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

impl TryFrom<String> for ImageId {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ImageId::parse(value)
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
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
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
        RemoteUser::parse(value)
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
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
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
        ImageName::parse(value)
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

impl PartialSchema for ImageId {
    fn schema() -> RefOr<Schema> {
        let allowed = format!("[^{WHITESPACE_OR_CONTROL}/?#%]");
        let allowed_but_dot = format!("[^{WHITESPACE_OR_CONTROL}/?#%.]");
        string_schema(
            "The provider's image id, chosen by the client: 1 to 255 bytes of UTF-8, no \
             whitespace or control characters, none of / ? # %, not . or ..",
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
             characters or ':'",
            Some(1),
            Some(REMOTE_USER_MAX_CHARS),
            Some(format!("^[^{WHITESPACE_OR_CONTROL}:]*$")),
        )
    }
}
impl ToSchema for RemoteUser {}

impl PartialSchema for ImageName {
    fn schema() -> RefOr<Schema> {
        string_schema(
            "A human name: 0 to 255 characters, no control characters",
            Some(0),
            Some(NAME_MAX_CHARS),
            Some(r"^[^\x00-\x1f\x7f-\x9f]*$".to_string()),
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
    /// Parses a create body (or an import line): `id`, `provider` and `remote_user`
    /// required, `name` optional.
    pub fn from_json(body: &[u8], providers: &[String]) -> Result<Image, ValidationError> {
        let mut fields = JsonFields::parse(body, IMAGE_FIELDS)?;
        let id = ImageId::parse(fields.required("id")?)?;
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
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(invalid(format!(
                "the body must be a JSON object, got {}",
                json_kind(&value)
            )));
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
