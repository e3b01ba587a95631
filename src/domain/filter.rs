//! Which images a listing keeps: one provider's, those a search text finds, or all.
//! The rule lives here once; the embedded store applies [`Filter::keeps`], and
//! PostgreSQL states the same rule in SQL (`store::postgres::reads`), which the engine
//! contract tests hold to the same answers.

use super::image::{Image, Provider, ValidationError};

/// The longest search text, in bytes.
pub const SEARCH_MAX_BYTES: usize = 255;

/// A search text (`?q=`): it finds an image whose id or name holds it, ASCII letters
/// matched without regard to case. Never empty; held folded to lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search(String);

impl Search {
    /// `None` for an empty text, which filters nothing.
    pub fn parse(text: &str) -> Result<Option<Search>, ValidationError> {
        if text.len() > SEARCH_MAX_BYTES {
            return Err(ValidationError(format!(
                "q must be at most {SEARCH_MAX_BYTES} bytes, got {}",
                text.len()
            )));
        }
        // No id or name holds one, and PostgreSQL's text cannot hold a NUL.
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(ValidationError(format!(
                "q must not contain control characters (found {c:?})"
            )));
        }
        Ok((!text.is_empty()).then(|| Search(text.to_ascii_lowercase())))
    }

    /// The text folded to lower case (ASCII letters only): what to look for in a
    /// haystack folded the same way.
    pub fn folded(&self) -> &str {
        &self.0
    }

    /// Whether `haystack` holds the text. Only ASCII letters are folded, so a byte
    /// comparison of the folded strings is the whole rule (`%` and `_` are literal).
    pub fn finds_in(&self, haystack: &str) -> bool {
        if haystack.len() < self.0.len() {
            return false;
        }
        haystack
            .as_bytes()
            .windows(self.0.len())
            .any(|window| window.eq_ignore_ascii_case(self.0.as_bytes()))
    }
}

/// A listing's filter; the default keeps every image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub provider: Option<Provider>,
    pub search: Option<Search>,
}

impl Filter {
    /// Keeps every image.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Keeps `provider`'s images only.
    pub fn provider(provider: Provider) -> Filter {
        Filter {
            provider: Some(provider),
            search: None,
        }
    }

    /// Whether it keeps every image.
    pub fn is_all(&self) -> bool {
        self.provider.is_none() && self.search.is_none()
    }

    pub fn keeps(&self, image: &Image) -> bool {
        self.keeps_fields(
            image.id.as_str(),
            image.provider.as_str(),
            image.name.as_str(),
        )
    }

    /// [`Filter::keeps`] on an image's fields as stored (a scan reads them without
    /// parsing the whole image).
    pub fn keeps_fields(&self, id: &str, provider: &str, name: &str) -> bool {
        self.provider
            .as_ref()
            .is_none_or(|p| p.as_str() == provider)
            && self
                .search
                .as_ref()
                .is_none_or(|s| s.finds_in(id) || s.finds_in(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, provider: &str, name: &str) -> Image {
        Image::from_json(
            format!(r#"{{"id":"{id}","provider":"{provider}","remote_user":"u","name":"{name}"}}"#)
                .as_bytes(),
            &["ec2".to_owned(), "openstack".to_owned()],
        )
        .unwrap()
    }

    fn search(text: &str) -> Search {
        Search::parse(text).unwrap().unwrap()
    }

    #[test]
    fn an_empty_text_filters_nothing_and_a_long_one_is_refused() {
        assert_eq!(Search::parse("").unwrap(), None);
        let longest = "a".repeat(SEARCH_MAX_BYTES);
        assert!(Search::parse(&longest).unwrap().is_some());
        let error = Search::parse(&format!("{longest}a")).unwrap_err();
        assert!(error.0.contains("at most 255 bytes"), "{}", error.0);
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(Search::parse(&"é".repeat(128)).is_err());
        assert!(Search::parse(&"é".repeat(127)).is_ok());
        for control in ["\0", "a\nb", "\u{7f}", "\u{9f}"] {
            let error = Search::parse(control).unwrap_err();
            assert!(error.0.contains("control characters"), "{}", error.0);
        }
    }

    #[test]
    fn finds_a_substring_of_id_or_name_folding_ascii_letters_only() {
        let ubuntu = image("ami-0ABC", "ec2", "Ubuntu 24.04 LTS");
        for text in ["ubuntu", "UBUNTU", "24.04 l", "0abc", "AMI-0", "u"] {
            assert!(
                Filter {
                    provider: None,
                    search: Some(search(text))
                }
                .keeps(&ubuntu),
                "{text}"
            );
        }
        for text in ["debian", "24.04  LTS", "ami-0abcd", "ec2"] {
            assert!(
                !Filter {
                    provider: None,
                    search: Some(search(text))
                }
                .keeps(&ubuntu),
                "{text}"
            );
        }
        // Only ASCII letters fold: É and é are different letters here.
        let accented = image("img-1", "ec2", "Café Édition");
        assert!(search("café").finds_in(accented.name.as_str()));
        assert!(search("CAFé").finds_in(accented.name.as_str()));
        assert!(!search("CAFÉ").finds_in(accented.name.as_str()));
        assert!(!search("édition").finds_in(accented.name.as_str()));
    }

    #[test]
    fn wildcards_of_sql_are_literal() {
        let percent = image("img-1", "ec2", "100% done_ok");
        assert!(search("100%").finds_in(percent.name.as_str()));
        assert!(search("e_o").finds_in(percent.name.as_str()));
        assert!(!search("1%0").finds_in(percent.name.as_str()));
        assert!(!search("done_k").finds_in(percent.name.as_str()));
        assert!(!search("%").finds_in("no percent"));
    }

    #[test]
    fn provider_and_search_both_hold() {
        let ec2 = image("ami-1", "ec2", "Ubuntu");
        let os = image("os-1", "openstack", "Ubuntu");
        let filter = Filter {
            provider: Some(ec2.provider.clone()),
            search: Some(search("ubuntu")),
        };
        assert!(filter.keeps(&ec2));
        assert!(!filter.keeps(&os));
        assert!(Filter::all().keeps(&os) && Filter::all().is_all());
        assert!(Filter::provider(os.provider.clone()).keeps(&os));
        assert!(!Filter::provider(os.provider.clone()).keeps(&ec2));
    }
}
