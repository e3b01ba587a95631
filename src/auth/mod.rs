//! Credentials -> user. HTTP Basic is checked against argon2id hashes, Bearer tokens
//! against their SHA-256. A successful Basic verification is remembered for a few
//! minutes so steady traffic does not pay argon2 on every request. Every attempt first
//! passes the brute-force [`Throttle`].
//!
//! Every remembered proof belongs to the access table it was proven under: a reload
//! (`replace`) starts a new epoch, a proof of an older epoch is a miss, and a
//! verification that a reload overtook is not remembered and counts only if the new
//! table still has the same credential for that user.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use std::time::{Duration, Instant};

use actix_web::web;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::RngCore;
use subtle::ConstantTimeEq;

use self::throttle::{Admission, Key, Throttle};
use crate::config::AuthConfig;
use crate::domain::access::{Access, User};
use crate::domain::change::sha256;
use sha2::Sha256;

pub mod throttle;

/// How long a successful Basic verification is trusted without argon2.
pub const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Bounds the cache's memory whatever the traffic.
const VERIFIED_MAX_ENTRIES: usize = 10_000;

const NO_CREDENTIALS: &str = "this route needs credentials: HTTP Basic (curl -u user:password) \
                              or an Authorization: Bearer token";
const BAD_CREDENTIALS: &str = "wrong user name, password or token";
const MALFORMED: &str = "the Authorization header is malformed; use Basic base64(user:password) \
                         or Bearer TOKEN";

/// Why a request was not let in. The HTTP layer turns it into a 401 or a 429.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No, malformed or wrong credentials; the message says which, never whose.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error(
        "too many failed logins for this user name from your address; retry in {retry_after_secs} s"
    )]
    TooManyFailedLogins { retry_after_secs: u64 },
}

/// What the client presented. Debug never shows the secret.
pub enum Credentials {
    Basic { user: String, password: Vec<u8> },
    Bearer(Vec<u8>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Parses an Authorization header value.
    pub fn parse(value: &[u8]) -> Result<Credentials, AuthError> {
        let malformed = AuthError::Unauthorized(MALFORMED);
        let text = std::str::from_utf8(value).map_err(|_| AuthError::Unauthorized(MALFORMED))?;
        let (scheme, rest) = text.trim().split_once(' ').ok_or(malformed)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| AuthError::Unauthorized(MALFORMED))?;
            let colon = decoded
                .iter()
                .position(|&b| b == b':')
                .ok_or(AuthError::Unauthorized(MALFORMED))?;
            let user = std::str::from_utf8(&decoded[..colon])
                .map_err(|_| AuthError::Unauthorized(MALFORMED))?
                .to_owned();
            Ok(Credentials::Basic {
                user,
                password: decoded[colon + 1..].to_vec(),
            })
        } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            Ok(Credentials::Bearer(rest.as_bytes().to_vec()))
        } else {
            Err(AuthError::Unauthorized(MALFORMED))
        }
    }
}

/// Hashes a password the way config expects it (argon2id, default parameters).
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

/// Whether `password` matches the PHC string `hash`. Slow by design: call it off the
/// request workers.
pub fn verify_password(password: &[u8], hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
        .unwrap_or(false)
}

/// The access table in force and its epoch: how many times it was replaced.
#[derive(Clone)]
struct Table {
    epoch: u64,
    access: Arc<Access>,
}

/// Proofs remembered for `VERIFIED_TTL`, by keyed hash, each with the epoch of the
/// access table it was proven under. quick_cache bounds the entries (evicting the
/// least useful, S3-FIFO); the TTL and the epoch are checked on every get. Measured
/// once against the hand-written `RwLock<HashMap>` it replaced (release, 10^7 gets
/// over 1,000 keys, a loaded 2-core machine): 58-70 ns a get against 66-78 ns.
struct ProofCache<V: Clone> {
    entries: quick_cache::sync::Cache<[u8; 32], Proof<V>>,
}

#[derive(Clone)]
struct Proof<V> {
    at: Instant,
    epoch: u64,
    value: V,
}

impl<V: Clone> ProofCache<V> {
    fn new() -> ProofCache<V> {
        ProofCache {
            entries: quick_cache::sync::Cache::new(VERIFIED_MAX_ENTRIES),
        }
    }

    /// The value proven under `epoch` in the last `VERIFIED_TTL`; a proof of another
    /// epoch is a miss.
    fn get(&self, key: &[u8; 32], epoch: u64) -> Option<V> {
        let proof = self.entries.get(key)?;
        (proof.epoch == epoch && proof.at.elapsed() < VERIFIED_TTL).then_some(proof.value)
    }

    /// Remembers `value` as proven under `epoch`, unless `current_epoch` says the table
    /// has been replaced meanwhile. A `replace` racing with this insert leaves at worst
    /// a proof of the old epoch, which `get` takes for a miss.
    fn insert(&self, key: [u8; 32], epoch: u64, value: V, current_epoch: impl FnOnce() -> u64) {
        if current_epoch() != epoch {
            return;
        }
        let at = Instant::now();
        self.entries.insert(key, Proof { at, epoch, value });
    }

    fn clear(&self) {
        self.entries.clear();
    }
}

/// The access table in force, the caches of proven credentials and the brute-force
/// throttle.
pub struct Authenticator {
    table: RwLock<Table>,
    /// (user, password, stored hash) triples whose argon2 check passed.
    verified: ProofCache<()>,
    /// Authorization header values that authenticated recently, by their keyed hash,
    /// and as whom: steady traffic skips decoding and every lookup.
    proven_headers: ProofCache<Arc<User>>,
    /// Per-process key of the cache, so its keys say nothing outside this process.
    cache_key: [u8; 64],
    /// Verified for unknown users, so they cost the same as a wrong password.
    decoy_hash: String,
    throttle: Throttle,
    /// Each argon2 verification holds ~19 MiB and a core for tens of ms: bounding how
    /// many run at once bounds what a flood of made-up names can cost.
    verifications: Arc<tokio::sync::Semaphore>,
    failed_logins: AtomicU64,
    /// argon2 verifications run, the decoy's included: what the caches save.
    password_verifications: AtomicU64,
}

impl Authenticator {
    pub fn new(access: Access, throttle: AuthConfig) -> Authenticator {
        let mut cache_key = [0u8; 64];
        rand::rng().fill_bytes(&mut cache_key);
        let mut decoy = [0u8; 32];
        rand::rng().fill_bytes(&mut decoy);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            table: RwLock::new(Table {
                epoch: 0,
                access: Arc::new(access),
            }),
            verified: ProofCache::new(),
            proven_headers: ProofCache::new(),
            cache_key,
            decoy_hash: hash_password(&decoy).unwrap_or_default(),
            throttle: Throttle::new(throttle),
            verifications: Arc::new(tokio::sync::Semaphore::new(cores.max(2))),
            failed_logins: AtomicU64::new(0),
            password_verifications: AtomicU64::new(0),
        }
    }

    /// Logins refused since start: wrong or unknown credentials, and attempts the
    /// throttle turned away. Missing or malformed Authorization headers are not counted.
    pub fn failed_logins(&self) -> u64 {
        self.failed_logins.load(Ordering::Relaxed)
    }

    /// argon2 password verifications run since start (shown in `/metrics`).
    pub fn password_verifications(&self) -> u64 {
        self.password_verifications.load(Ordering::Relaxed)
    }

    pub fn access(&self) -> Arc<Access> {
        self.table().access
    }

    fn table(&self) -> Table {
        self.table.read().clone()
    }

    fn epoch(&self) -> u64 {
        self.table.read().epoch
    }

    /// Whether user `name` holds `policy` in the access table in force now.
    pub fn holds_now(&self, name: &str, policy: &str) -> bool {
        self.table
            .read()
            .access
            .user(name)
            .is_some_and(|user| user.holds(policy))
    }

    /// Switches to a new access table at once, in a new epoch: every proof of the old
    /// one stops counting, also one that a verification still running adds later.
    pub fn replace(&self, access: Access) {
        let mut table = self.table.write();
        table.epoch += 1;
        table.access = Arc::new(access);
        drop(table);
        // Only memory: the old epoch's entries are misses already.
        self.verified.clear();
        self.proven_headers.clear();
    }

    /// Who an `Authorization` header value belongs to. A value that authenticated in
    /// the last `VERIFIED_TTL` is recognised by its keyed hash alone; any other is
    /// parsed and goes through [`Authenticator::authenticate`].
    pub async fn authenticate_header(
        &self,
        value: Option<&[u8]>,
        client: Option<IpAddr>,
    ) -> Result<Arc<User>, AuthError> {
        let value = value.ok_or(AuthError::Unauthorized(NO_CREDENTIALS))?;
        let key = self.keyed_hash(&[value]);
        if let Some(user) = self.proven_header(&key) {
            return Ok(user);
        }
        let (epoch, user) = self.login(Credentials::parse(value)?, client).await?;
        self.proven_headers
            .insert(key, epoch, user.clone(), || self.epoch());
        Ok(user)
    }

    /// The user of a header proven under the current table, as that table has it.
    fn proven_header(&self, key: &[u8; 32]) -> Option<Arc<User>> {
        let table = self.table();
        let user = self.proven_headers.get(key, table.epoch)?;
        table.access.user(&user.name).cloned()
    }

    /// Who `credentials` belong to, after the throttle has let the attempt through.
    /// `client` is the peer address, which the throttle counts failures against.
    pub async fn authenticate(
        &self,
        credentials: Credentials,
        client: Option<IpAddr>,
    ) -> Result<Arc<User>, AuthError> {
        Ok(self.login(credentials, client).await?.1)
    }

    /// [`Authenticator::authenticate`], and the epoch of the access table the user was
    /// proven under: remember the proof only if that is still the current one.
    async fn login(
        &self,
        credentials: Credentials,
        client: Option<IpAddr>,
    ) -> Result<(u64, Arc<User>), AuthError> {
        let table = self.table();
        // Proven credentials skip the throttle, which is there to slow guesses: a
        // guess never is proven (failures are not remembered).
        if let Some(user) = self.proven(&table, &credentials) {
            return Ok((table.epoch, user));
        }
        let bearer = matches!(credentials, Credentials::Bearer(_));
        let (key, who) = match &credentials {
            Credentials::Basic { user, .. } => (Key::user(user, client), self.shown_name(user)),
            Credentials::Bearer(_) => (Key::token(client), "a Bearer token".to_owned()),
        };
        let from = client.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
        let mut ticket = self.wait_for_turn(key, &who, &from).await?;
        // Taken before the check starts: whatever a reload changes from here on, the
        // answer is checked again against the table then in force.
        let table = self.table();
        log::debug!("verifying the credentials of {who} from {from}");
        let result = self
            .verify(&table, credentials)
            .await
            .and_then(|user| self.still_valid(table.epoch, &user, bearer));
        let failures = ticket.finish(Some(result.is_ok()));
        if result.is_err() {
            self.failed_logins.fetch_add(1, Ordering::Relaxed);
            log::warn!("failed login for {who} from {from} ({failures} in a row)");
        }
        Ok((table.epoch, result?))
    }

    /// `user`, proven under the table of `epoch`, as the current table has it. When a
    /// reload came in between, the user must still be there with the same password
    /// hash (or token, for a Bearer login): the current table's roles apply, and a
    /// removed user or a changed credential is refused.
    fn still_valid(
        &self,
        epoch: u64,
        user: &Arc<User>,
        bearer: bool,
    ) -> Result<Arc<User>, AuthError> {
        let table = self.table();
        if table.epoch == epoch {
            return Ok(user.clone());
        }
        table
            .access
            .user(&user.name)
            .filter(|current| {
                if bearer {
                    current.token_sha256.is_some() && current.token_sha256 == user.token_sha256
                } else {
                    current.password_hash.is_some() && current.password_hash == user.password_hash
                }
            })
            .cloned()
            .ok_or(AuthError::Unauthorized(BAD_CREDENTIALS))
    }

    /// Waits until the throttle admits an attempt of `key`, or refuses it.
    async fn wait_for_turn(
        &self,
        key: Key,
        who: &str,
        from: &str,
    ) -> Result<Ticket<'_>, AuthError> {
        loop {
            let mut changed = std::pin::pin!(self.throttle.changed());
            changed.as_mut().enable();
            match self.throttle.admit(key, Instant::now()) {
                Admission::Go { wait, failures } => {
                    // From here on the attempt is in flight: if the client leaves while
                    // it waits, dropping the ticket tells the throttle.
                    let ticket = Ticket {
                        throttle: &self.throttle,
                        key,
                        finished: false,
                    };
                    if !wait.is_zero() {
                        log::info!(
                            "login for {who} from {from} waits {} ms after {failures} failures \
                             in a row",
                            wait.as_millis()
                        );
                        // Asleep on the timer, not on a worker thread.
                        actix_web::rt::time::sleep(wait).await;
                    }
                    return Ok(ticket);
                }
                Admission::Busy => changed.await,
                Admission::Refused { retry_after } => {
                    self.failed_logins.fetch_add(1, Ordering::Relaxed);
                    let retry_after_secs = retry_after.as_secs() + 1;
                    log::warn!(
                        "login for {who} from {from} refused: too many failures in a row; \
                         the next is allowed in {retry_after_secs} s"
                    );
                    return Err(AuthError::TooManyFailedLogins { retry_after_secs });
                }
            }
        }
    }

    /// Checks `credentials` against `table`, the table in force when the attempt began.
    async fn verify(
        &self,
        table: &Table,
        credentials: Credentials,
    ) -> Result<Arc<User>, AuthError> {
        let access = &table.access;
        match credentials {
            Credentials::Bearer(token) => {
                token_user(access, &token).ok_or(AuthError::Unauthorized(BAD_CREDENTIALS))
            }
            Credentials::Basic { user, password } => {
                let found = access
                    .user(&user)
                    .and_then(|u| u.password_hash.as_ref().map(|h| (u.clone(), h.clone())));
                let Some((user, hash)) = found else {
                    let decoy = self.decoy_hash.clone();
                    let slot = self.verification_slot().await;
                    self.password_verifications.fetch_add(1, Ordering::Relaxed);
                    let _ = web::block(move || {
                        let _slot = slot;
                        verify_password(&password, &decoy)
                    })
                    .await;
                    return Err(AuthError::Unauthorized(BAD_CREDENTIALS));
                };
                let key = self.cache_entry(&user.name, &password, &hash);
                if self.verified.get(&key, table.epoch).is_some() {
                    return Ok(user);
                }
                let slot = self.verification_slot().await;
                self.password_verifications.fetch_add(1, Ordering::Relaxed);
                let ok = web::block(move || {
                    let _slot = slot;
                    verify_password(&password, &hash)
                })
                .await
                .unwrap_or(false);
                if !ok {
                    return Err(AuthError::Unauthorized(BAD_CREDENTIALS));
                }
                self.verified.insert(key, table.epoch, (), || self.epoch());
                Ok(user)
            }
        }
    }

    /// The user of credentials proven already: a valid Bearer token (one SHA-256), or
    /// a Basic password verified in the last `VERIFIED_TTL` against the user's hash in
    /// `table`. This is the path of steady traffic: no argon2, no throttle.
    fn proven(&self, table: &Table, credentials: &Credentials) -> Option<Arc<User>> {
        match credentials {
            Credentials::Bearer(token) => token_user(&table.access, token),
            Credentials::Basic { user, password } => {
                let user = table.access.user(user)?;
                let hash = user.password_hash.as_ref()?;
                let key = self.cache_entry(&user.name, password, hash);
                self.verified.get(&key, table.epoch).map(|()| user.clone())
            }
        }
    }

    /// A user name as the log shows it. A name that matches no user is often a
    /// password typed into the wrong field, so it is shown only as a fingerprint
    /// (stable for this process, so that repeated attempts can be told apart).
    fn shown_name(&self, name: &str) -> String {
        if self.access().user(name).is_some() {
            return format!("user '{}'", name.escape_debug());
        }
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.cache_key.into());
        mac.update(b"log-fingerprint\0");
        mac.update(name.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("unknown user name #{}", hex::encode(&digest[..4]))
    }

    /// A permit to run one argon2 verification. It moves into the blocking task, so a
    /// client that leaves mid-verification does not free it before the work is done.
    async fn verification_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.verifications.clone().acquire_owned().await.ok()
    }

    fn cache_entry(&self, user: &str, password: &[u8], hash: &str) -> [u8; 32] {
        self.keyed_hash(&[user.as_bytes(), password, hash.as_bytes()])
    }

    /// HMAC-SHA256 under the per-process key. Length prefixes keep ("ab", "c") and
    /// ("a", "bc") apart.
    fn keyed_hash(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.cache_key.into());
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The user whose token has this SHA-256, compared against every token without
/// stopping early, each in constant time.
fn token_user(access: &Access, token: &[u8]) -> Option<Arc<User>> {
    let digest = sha256(token);
    let mut found = None;
    for user in access.users() {
        if let Some(expected) = &user.token_sha256
            && bool::from(expected.ct_eq(&digest))
        {
            found = Some(user.clone());
        }
    }
    found
}

/// An admitted attempt; tells the throttle how it ended, also when dropped unanswered.
struct Ticket<'a> {
    throttle: &'a Throttle,
    key: Key,
    finished: bool,
}

impl Ticket<'_> {
    /// `Some(ok)` once verified; `None` when abandoned. Returns the failures in a row.
    fn finish(&mut self, outcome: Option<bool>) -> u32 {
        self.finished = true;
        self.throttle.finish(self.key, outcome, Instant::now())
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
        .into_bytes()
    }

    #[test]
    fn parses_basic_with_colon_in_password() {
        match Credentials::parse(&basic("admin:pa:ss")).unwrap() {
            Credentials::Basic { user, password } => {
                assert_eq!(user, "admin");
                assert_eq!(password, b"pa:ss");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_bearer_case_insensitively() {
        assert!(matches!(
            Credentials::parse(b"bearer abc").unwrap(),
            Credentials::Bearer(t) if t == b"abc"
        ));
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            &b"Basic"[..],
            b"Basic !!!",
            b"Basic YWRtaW4=", // "admin", no colon
            b"Bearer ",
            b"Digest abc",
            b"\xff\xfe",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!("{:?}", Credentials::parse(&basic("u:hunter2")).unwrap());
        assert!(!shown.contains("hunter2"));
        let shown = format!("{:?}", Credentials::parse(b"Bearer tok3n").unwrap());
        assert!(!shown.contains("tok3n"));
    }

    fn cheap_hash(password: &str) -> String {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"unit-test-salt16").unwrap();
        argon
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn failed_logins_are_counted_and_successes_are_not() {
        let text = format!(
            "[policies]\nread_images = [\"r\"]\n\
             [[users]]\nname = \"u\"\npassword_hash = \"{}\"\nroles = [\"r\"]\n\
             [[users]]\nname = \"bot\"\ntoken_sha256 = \"{}\"\nroles = [\"r\"]\n",
            cheap_hash("pw"),
            hex::encode(sha256(b"tok"))
        );
        let config = crate::config::Config::parse(&text, std::path::Path::new("/")).unwrap();
        let auth = Authenticator::new(config.access, config.auth);
        let client = Some(IpAddr::from([127, 0, 0, 1]));
        actix_web::rt::System::new().block_on(async {
            for wrong in [basic("u:wrong"), basic("ghost:pw"), b"Bearer nope".to_vec()] {
                let credentials = Credentials::parse(&wrong).unwrap();
                assert!(auth.authenticate(credentials, client).await.is_err());
            }
            assert_eq!(auth.failed_logins(), 3);
            for right in [basic("u:pw"), basic("u:pw"), b"Bearer tok".to_vec()] {
                let credentials = Credentials::parse(&right).unwrap();
                assert!(auth.authenticate(credentials, client).await.is_ok());
            }
            assert_eq!(auth.failed_logins(), 3);
        });
    }

    fn config(users: &[(&str, &str, &str)]) -> crate::config::Config {
        let mut text =
            "[policies]\nread_images = [\"r\", \"w\"]\ncreate_image = [\"w\"]\n".to_owned();
        for (name, password, role) in users {
            text.push_str(&format!(
                "[[users]]\nname = \"{name}\"\npassword_hash = \"{}\"\nroles = [\"{role}\"]\n",
                cheap_hash(password)
            ));
        }
        crate::config::Config::parse(&text, std::path::Path::new("/")).unwrap()
    }

    fn access(users: &[(&str, &str, &str)]) -> Access {
        config(users).access
    }

    fn authenticator(users: &[(&str, &str, &str)]) -> Authenticator {
        let config = config(users);
        Authenticator::new(config.access, config.auth)
    }

    const CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    /// Starts a login with `header` and lets it run until it waits for a verification
    /// slot (its access table is taken by then), applies `reload`, then lets it finish:
    /// a reload that lands while the password is being checked, without timing.
    async fn login_overtaken_by(
        auth: &Authenticator,
        header: &[u8],
        reload: impl FnOnce(),
    ) -> Result<Arc<User>, AuthError> {
        let slots = auth.verifications.available_permits() as u32;
        let held = auth
            .verifications
            .clone()
            .acquire_many_owned(slots)
            .await
            .unwrap();
        let mut login = std::pin::pin!(auth.authenticate_header(Some(header), CLIENT));
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(login.as_mut().poll(cx).is_pending()))
                .await;
        assert!(first, "the login waits for a verification slot");
        reload();
        drop(held);
        login.await
    }

    fn run<T>(test: impl Future<Output = T>) -> T {
        actix_web::rt::System::new().block_on(test)
    }

    #[test]
    fn a_user_removed_while_its_password_is_checked_is_refused() {
        let auth = authenticator(&[("u", "pw", "w"), ("other", "o", "r")]);
        run(async {
            let login = login_overtaken_by(&auth, &basic("u:pw"), || {
                auth.replace(access(&[("other", "o", "r")]))
            })
            .await;
            assert!(login.is_err(), "the login that a reload overtook");
            let again = auth.authenticate_header(Some(&basic("u:pw")), CLIENT).await;
            assert!(again.is_err(), "the removed user's next request");
        });
    }

    #[test]
    fn a_password_rotated_while_it_is_checked_is_refused() {
        let auth = authenticator(&[("u", "old", "w")]);
        run(async {
            let login = login_overtaken_by(&auth, &basic("u:old"), || {
                auth.replace(access(&[("u", "new", "w")]))
            })
            .await;
            assert!(login.is_err(), "the login that a reload overtook");
            let again = auth
                .authenticate_header(Some(&basic("u:old")), CLIENT)
                .await;
            assert!(again.is_err(), "the old password's next request");
            let new = auth
                .authenticate_header(Some(&basic("u:new")), CLIENT)
                .await;
            assert!(new.unwrap().holds("create_image"));
        });
    }

    #[test]
    fn roles_changed_while_a_password_is_checked_apply_at_once() {
        let auth = authenticator(&[("u", "pw", "w")]);
        run(async {
            let login = login_overtaken_by(&auth, &basic("u:pw"), || {
                auth.replace(access(&[("u", "pw", "r")]))
            })
            .await
            .expect("same user, same password");
            assert!(login.holds("read_images"));
            assert!(!login.holds("create_image"), "the new roles");
            // Proven in the old epoch: not remembered, so argon2 runs again, under the
            // new table.
            let key = auth.keyed_hash(&[&basic("u:pw")]);
            assert!(auth.proven_header(&key).is_none());
            let again = auth.authenticate_header(Some(&basic("u:pw")), CLIENT).await;
            assert!(!again.unwrap().holds("create_image"));
            // Now remembered; a reload that changes the roles again is seen at once.
            assert!(auth.proven_header(&key).is_some());
            auth.replace(access(&[("u", "pw", "w")]));
            let cached = auth.authenticate_header(Some(&basic("u:pw")), CLIENT).await;
            assert!(cached.unwrap().holds("create_image"));
        });
    }

    #[test]
    fn a_proof_of_another_epoch_is_neither_kept_nor_found() {
        let cache = ProofCache::new();
        cache.insert([1; 32], 4, "stale", || 5);
        assert_eq!(
            cache.get(&[1; 32], 4),
            None,
            "the epoch moved: not inserted"
        );
        cache.insert([1; 32], 5, "fresh", || 5);
        assert_eq!(cache.get(&[1; 32], 5), Some("fresh"));
        assert_eq!(
            cache.get(&[1; 32], 6),
            None,
            "an older epoch's proof is a miss"
        );
    }

    #[test]
    fn the_cache_keeps_at_most_its_bound() {
        let cache = ProofCache::new();
        for i in 0..3 * VERIFIED_MAX_ENTRIES as u32 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(key, 0, (), || 0);
        }
        let kept = cache.entries.len();
        assert!(kept > 0 && kept <= VERIFIED_MAX_ENTRIES, "{kept}");
    }

    #[test]
    fn hash_then_verify() {
        let hash = hash_password(b"s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(b"s3cret", &hash));
        assert!(!verify_password(b"s3cret!", &hash));
    }
}
