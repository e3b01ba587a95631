//! A database URL as config.toml or the environment gives it: a password in it is
//! shown only masked, and the libpq words tokio-postgres does not know (`sslmode=
//! verify-ca|verify-full`, `sslrootcert`) are taken out here. tokio-postgres knows
//! `sslmode=disable|prefer|require` only and never verifies a certificate itself: the
//! TLS connector does (`store::postgres::tls`). Pure text work, no connection, so that
//! config.rs can refuse a URL that cannot be read.

use std::path::PathBuf;

/// A database URL, which may hold a password: shown only with the password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: String) -> DatabaseUrl {
        DatabaseUrl(url)
    }

    /// The URL itself, password and all: for the database client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the URL carries a password (`user:password@`, or `password=`).
    pub fn has_password(&self) -> bool {
        self.masked() != self.0
    }

    /// The URL with any password replaced by `***`, fit for a log or a message: the
    /// one in `user:password@` (however it is written: percent-encoded, or with a raw
    /// `@`, `/` or `?` in it), `password=` query words, and the `password` of a
    /// `key=value` string. Where the text is ambiguous, more is hidden, never less.
    pub fn masked(&self) -> String {
        let url = &self.0;
        let scheme = ["postgres://", "postgresql://"].into_iter().find(|scheme| {
            url.get(..scheme.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
        });
        match scheme {
            Some(scheme) => {
                let (scheme, rest) = url.split_at(scheme.len());
                format!("{scheme}{}", mask_userinfo(&mask_query_passwords(rest)))
            }
            None => mask_key_values(url),
        }
    }
}

/// `user:password@host...` with the password masked. As the database client reads
/// it, the credentials run to the first `@`; a password with a raw `@` in it runs to
/// the last `@` before the path, so that one is masked up to.
fn mask_userinfo(rest: &str) -> String {
    let Some(first_at) = rest.find('@') else {
        return rest.to_owned();
    };
    let authority_end = rest[first_at..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| first_at + i);
    let userinfo_end = rest[..authority_end].rfind('@').unwrap_or(first_at);
    let (userinfo, host) = rest.split_at(userinfo_end);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***{host}"),
        None => rest.to_owned(),
    }
}

/// Every `password=value` that follows a `?` or `&`, with the value masked up to the
/// next `&`. A key may be percent-encoded (the client decodes it).
fn mask_query_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut at_key = false;
    while let Some(c) = text[i..].chars().next() {
        if at_key {
            let key_end = text[i..]
                .find(['=', '&', '?'])
                .map_or(text.len(), |j| i + j);
            if text[key_end..].starts_with('=') && is_password_key(&text[i..key_end]) {
                out.push_str(&text[i..=key_end]);
                out.push_str("***");
                i = text[key_end..]
                    .find('&')
                    .map_or(text.len(), |j| key_end + j);
                at_key = false;
                continue;
            }
        }
        out.push(c);
        i += c.len_utf8();
        at_key = c == '?' || c == '&';
    }
    out
}

fn is_password_key(key: &str) -> bool {
    percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .trim()
        .eq_ignore_ascii_case("password")
}

/// A `key=value` connection string (`host=db user=u password='a b'`) with the
/// password's value masked, read as the database client reads it: blanks around `=`,
/// values in single quotes, backslash escapes. After a `password` keyword, the next
/// value is masked even when the `=` is missing.
fn mask_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let blank = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..blank]);
        rest = &rest[blank..];
        if rest.is_empty() {
            return out;
        }
        let key_end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let (key, after) = rest.split_at(key_end);
        out.push_str(key);
        let gap = after.len() - after.trim_start().len();
        let mut value = &after[gap..];
        let mut separator = &after[..gap];
        if let Some(stripped) = value.strip_prefix('=') {
            let blank = stripped.len() - stripped.trim_start().len();
            separator = &after[..gap + 1 + blank];
            value = &stripped[blank..];
        } else if !key.trim().eq_ignore_ascii_case("password") {
            // A word without `=` (the client refuses it); go on from the next one.
            rest = after;
            continue;
        }
        let value_len = value_length(value);
        out.push_str(separator);
        if key.trim().eq_ignore_ascii_case("password") {
            out.push_str("***");
        } else {
            out.push_str(&value[..value_len]);
        }
        rest = &value[value_len..];
    }
}

/// The length of the value at the start of `text`: a quoted one up to its closing
/// quote (all of `text` if there is none), a bare one up to a blank.
fn value_length(text: &str) -> usize {
    let quoted = text.starts_with('\'');
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(usize::from(quoted)) {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if quoted && c == '\'' {
            return i + 1;
        } else if !quoted && c.is_whitespace() {
            return i;
        }
    }
    text.len()
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

/// How much the server's certificate is checked, as libpq's `sslmode` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// `disable`, `prefer`, `require`: encrypted when TLS is used, nothing verified.
    Nothing,
    /// `verify-ca`: the chain up to a trusted root, not the host name.
    Chain,
    /// `verify-full`: the chain and the host name.
    Full,
}

/// A URL with the words tokio-postgres does not know taken out.
#[derive(Debug)]
pub struct Split {
    /// What tokio-postgres parses.
    pub url: String,
    pub verify: Verify,
    /// `sslrootcert`: the CA file; without it, the Mozilla roots of webpki-roots.
    pub root_cert: Option<PathBuf>,
}

/// Takes `sslmode=verify-ca|verify-full` (replaced by `require`) and `sslrootcert`
/// out of a `postgres://` URL or a `key=value` connection string.
pub fn split_url(url: &str) -> Result<Split, String> {
    let mut verify = Verify::Nothing;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<Option<String>, String> {
        match (key, value) {
            ("sslmode", "verify-full") => {
                verify = Verify::Full;
                Ok(Some("require".into()))
            }
            ("sslmode", "verify-ca") => {
                verify = Verify::Chain;
                Ok(Some("require".into()))
            }
            ("sslrootcert", path) => {
                if path.is_empty() {
                    return Err("sslrootcert is empty".into());
                }
                root_cert = Some(PathBuf::from(path));
                Ok(None)
            }
            (_, value) => Ok(Some(value.to_owned())),
        }
    };
    let cleaned = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| format!("the value of '{key}' in the database URL is not UTF-8"))?;
            if let Some(new) = take(key, &decoded)? {
                if new == decoded {
                    kept.push(pair.to_owned());
                } else {
                    kept.push(format!("{key}={new}"));
                }
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        // key=value form; values with spaces must be quoted and are kept as they are.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((key, value)) if !value.starts_with('\'') => {
                    if let Some(new) = take(key.trim(), value)? {
                        kept.push(format!("{key}={new}"));
                    }
                }
                _ => kept.push(word.to_owned()),
            }
        }
        kept.join(" ")
    };
    Ok(Split {
        url: cleaned,
        verify,
        root_cert,
    })
}

/// Whether `url` is a connection URL or `key=value` string this store can use, read
/// without connecting: at config load, a typo is a config error, not a restart loop.
/// The message may quote a piece of the URL (see `config::hide_unshown`).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err("it is empty".into());
    }
    let split = split_url(url)?;
    let config: tokio_postgres::Config =
        split.url.parse().map_err(|e: tokio_postgres::Error| {
            match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        })?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err("it names no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_hides_every_spelling_of_a_password() {
        let cases = [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            (
                "postgresql://u:s%40c%2Fret@h/db?sslmode=require",
                "postgresql://u:***@h/db?sslmode=require",
            ),
            ("POSTGRES://u:secret@h/db", "POSTGRES://u:***@h/db"),
            // Raw characters that end an authority elsewhere.
            ("postgres://u:se@cret@h/db", "postgres://u:***@h/db"),
            ("postgres://u:se/cret@h/db", "postgres://u:***@h/db"),
            ("postgres://u:se?cret@h/db", "postgres://u:***@h/db"),
            ("postgres://u:@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:secret@[::1]:5432,h2:5433/db",
                "postgres://u:***@[::1]:5432,h2:5433/db",
            ),
            // Query words.
            (
                "postgres://u@h/db?sslmode=require&password=secret&application_name=x",
                "postgres://u@h/db?sslmode=require&password=***&application_name=x",
            ),
            (
                "postgres://h/db?password=secret",
                "postgres://h/db?password=***",
            ),
            (
                "postgres://h/db?PASSWORD=secret",
                "postgres://h/db?PASSWORD=***",
            ),
            (
                "postgres://h/db?pass%77ord=secret",
                "postgres://h/db?pass%77ord=***",
            ),
            (
                "postgres://h:5/db?password=se@cret",
                "postgres://h:5/db?password=***",
            ),
            (
                "postgres://u:one@h/db?password=two",
                "postgres://u:***@h/db?password=***",
            ),
            // key=value strings.
            (
                "host=h user=u password=secret dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
            (
                "host=h password = 'se cret' dbname=d",
                "host=h password = *** dbname=d",
            ),
            ("password='it\\'s secret' host=h", "password=*** host=h"),
            ("password=se\\ cret host=h", "password=*** host=h"),
            ("host=h password secret", "host=h password ***"),
            ("host=h Password=secret", "host=h Password=***"),
        ];
        for (url, expected) in cases {
            let url = DatabaseUrl::new(url.to_owned());
            assert_eq!(url.masked(), expected, "{:?}", url.expose());
            assert!(url.has_password(), "{expected}");
            assert!(!format!("{url:?}").contains("secret"));
        }
    }

    #[test]
    fn masked_leaves_a_url_without_password_as_it_is() {
        for url in [
            "postgres://h/db",
            "postgres://u@h:5432/db",
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/etc/ic/ca.pem",
            "postgres://u@h/db?application_name=a@b&options=-c%20x%3Dy",
            "postgres://u@h/db?passwordless=1",
            "host=h user=u dbname=d sslmode=require",
            "host=h application_name='a b' user=u",
            "",
        ] {
            let database = DatabaseUrl::new(url.to_owned());
            assert_eq!(database.masked(), url);
            assert!(!database.has_password(), "{url}");
        }
    }

    #[test]
    fn verify_words_are_taken_out_of_a_url() {
        let split =
            split_url("postgres://u:p%40ss@db:5432/cat?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(
            split.url,
            "postgres://u:p%40ss@db:5432/cat?sslmode=require&application_name=x"
        );
        assert_eq!(split.verify, Verify::Full);
        assert_eq!(split.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let plain = split_url("postgres://u@db/cat?sslmode=require").unwrap();
        assert_eq!(plain.url, "postgres://u@db/cat?sslmode=require");
        assert_eq!(plain.verify, Verify::Nothing);
        let bare = split_url("postgresql://u@db/cat?sslrootcert=ca.pem").unwrap();
        assert_eq!(bare.url, "postgresql://u@db/cat");
        let ca = split_url("postgres://db/cat?sslmode=verify-ca").unwrap();
        assert_eq!(ca.verify, Verify::Chain);
    }

    #[test]
    fn verify_words_are_taken_out_of_key_value_strings() {
        let split = split_url("host=db user=u sslmode=verify-full sslrootcert=/ca.pem").unwrap();
        assert_eq!(split.url, "host=db user=u sslmode=require");
        assert_eq!(split.verify, Verify::Full);
        assert_eq!(split.root_cert, Some(PathBuf::from("/ca.pem")));
    }
}
