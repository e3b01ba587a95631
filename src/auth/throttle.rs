//! Slows down password and token guessing.
//!
//! Login attempts are counted per (user name, client address): an attacker who
//! hammers one user from one address slows only that pair, and the user still logs in
//! at full speed from anywhere else. The table never learns whether the user exists:
//! it sees only the name the client sent, so unknown and known names are throttled
//! alike.
//!
//! While a pair has fewer than `free_failures` failures in a row, its attempts go
//! straight on, but at most as many at once as failures it has left — so a burst of
//! parallel guesses cannot all be verified before the first failures are counted.
//! Past that, each attempt waits for its turn, the gap doubling with every failure up
//! to `max_delay`; an attempt whose turn is further away than `max_delay` is refused
//! at once. A success forgets the pair, and so does a quiet `quiet_window`.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::AuthConfig;

/// Whose attempts are counted together. The user name is kept as a digest: it is
/// client input of any length, and the table must stay small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// `None` for Bearer tokens, which carry no user name.
    user: Option<[u8; 32]>,
    client: Option<IpAddr>,
}

impl Key {
    pub fn user(name: &str, client: Option<IpAddr>) -> Key {
        Key {
            user: Some(Sha256::digest(name.as_bytes()).into()),
            client,
        }
    }

    pub fn token(client: Option<IpAddr>) -> Key {
        Key { user: None, client }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Verify after waiting `wait` (zero when the pair is not throttled). The ticket
    /// must be resolved with the outcome; dropping it counts as abandoned.
    Go { wait: Duration, failures: u32 },
    /// As many attempts of this pair are being verified as it may have at once; wait
    /// for one of them to finish ([`Throttle::changed`]) and ask again.
    Busy,
    /// The pair's queue of turns is longer than `max_delay`: refuse without verifying.
    Refused { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    in_flight: u32,
    next_turn: Instant,
    last_seen: Instant,
}

pub struct Throttle {
    config: AuthConfig,
    entries: Mutex<HashMap<Key, Entry>>,
    /// Woken whenever an attempt finishes, for the attempts that are [`Admission::Busy`].
    changed: Notify,
}

impl Throttle {
    pub fn new(config: AuthConfig) -> Throttle {
        Throttle {
            config,
            entries: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock()
    }

    /// Resolves when some attempt finishes. Create (and enable) it before calling
    /// [`Throttle::admit`], so that a finish in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Decides what an attempt of `key` arriving at `now` does, and on `Go` counts it
    /// as in flight until [`Throttle::finish`].
    pub fn admit(&self, key: Key, now: Instant) -> Admission {
        let mut entries = self.entries();
        if !entries.contains_key(&key) && entries.len() >= self.config.max_tracked {
            self.make_room(&mut entries, now);
        }
        let fresh = Entry {
            failures: 0,
            in_flight: 0,
            next_turn: now,
            last_seen: now,
        };
        let entry = entries.entry(key).or_insert(fresh);
        if entry.in_flight == 0
            && now.saturating_duration_since(entry.last_seen) >= self.config.quiet_window
        {
            *entry = fresh;
        }
        entry.last_seen = now;
        let free = self.config.free_failures;
        if entry.failures < free {
            if entry.in_flight >= free - entry.failures {
                return Admission::Busy;
            }
            entry.in_flight += 1;
            return Admission::Go {
                wait: Duration::ZERO,
                failures: entry.failures,
            };
        }
        let turn = entry.next_turn.max(now);
        let wait = turn - now;
        if wait > self.config.max_delay {
            return Admission::Refused {
                retry_after: wait - self.config.max_delay,
            };
        }
        entry.next_turn = turn + self.delay_after(entry.failures);
        entry.in_flight += 1;
        Admission::Go {
            wait,
            failures: entry.failures,
        }
    }

    /// Records how an admitted attempt ended: `Some(true)` authenticated, `Some(false)`
    /// wrong credentials, `None` abandoned before an answer (nothing was learned).
    /// Returns the pair's failures in a row.
    pub fn finish(&self, key: Key, outcome: Option<bool>, now: Instant) -> u32 {
        let mut entries = self.entries();
        let failures = match entries.get_mut(&key) {
            // Evicted meanwhile: the table was full, and this pair the oldest.
            None => u32::from(outcome == Some(false)),
            Some(entry) => {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                entry.last_seen = now;
                match outcome {
                    Some(true) => {
                        entry.failures = 0;
                        entry.next_turn = now;
                    }
                    Some(false) => {
                        entry.failures = entry.failures.saturating_add(1);
                        // The next attempt keeps its distance from this failure, also
                        // the first one past the free failures.
                        let earliest = now + self.delay_after(entry.failures);
                        entry.next_turn = entry.next_turn.max(earliest);
                    }
                    None => {}
                }
                let failures = entry.failures;
                if failures == 0 && entry.in_flight == 0 {
                    entries.remove(&key);
                }
                failures
            }
        };
        drop(entries);
        self.changed.notify_waiters();
        failures
    }

    /// The gap this pair must leave between attempts after `failures` in a row.
    pub fn delay_after(&self, failures: u32) -> Duration {
        let Some(doublings) = failures.checked_sub(self.config.free_failures) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.config
            .first_delay
            .saturating_mul(factor)
            .min(self.config.max_delay)
    }

    /// How many pairs the table holds now.
    pub fn tracked(&self) -> usize {
        self.entries().len()
    }

    /// Frees one slot at least: every forgotten pair, else the one seen longest ago.
    /// Linear, but only when the table is full.
    fn make_room(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        let quiet = self.config.quiet_window;
        entries
            .retain(|_, e| e.in_flight > 0 || now.saturating_duration_since(e.last_seen) < quiet);
        while entries.len() >= self.config.max_tracked {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| *k)
            else {
                break;
            };
            entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn config() -> AuthConfig {
        AuthConfig {
            free_failures: 2,
            first_delay: SECOND,
            max_delay: 8 * SECOND,
            quiet_window: 60 * SECOND,
            max_tracked: 100,
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    fn go(wait: Duration, failures: u32) -> Admission {
        Admission::Go { wait, failures }
    }

    /// One failing attempt by a client that waits for its turn: the clock moves on to
    /// it. Returns how long the attempt waited.
    fn fail(t: &Throttle, key: Key, now: &mut Instant) -> Duration {
        let Admission::Go { wait, .. } = t.admit(key, *now) else {
            panic!("attempt not admitted");
        };
        *now += wait;
        t.finish(key, Some(false), *now);
        wait
    }

    #[test]
    fn delays_start_after_the_free_failures_double_and_cap() {
        let t = Throttle::new(config());
        assert_eq!(t.delay_after(0), Duration::ZERO);
        assert_eq!(t.delay_after(1), Duration::ZERO);
        assert_eq!(t.delay_after(2), SECOND);
        assert_eq!(t.delay_after(3), 2 * SECOND);
        assert_eq!(t.delay_after(4), 4 * SECOND);
        assert_eq!(t.delay_after(5), 8 * SECOND);
        assert_eq!(t.delay_after(6), 8 * SECOND);
        assert_eq!(t.delay_after(u32::MAX), 8 * SECOND);
    }

    #[test]
    fn a_guesser_waits_longer_after_each_failure() {
        let t = Throttle::new(config());
        let key = Key::user("admin", ip(1));
        let mut now = Instant::now();
        let waits: Vec<u64> = (0..8).map(|_| fail(&t, key, &mut now).as_secs()).collect();
        assert_eq!(waits, [0, 0, 1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn parallel_guesses_queue_and_past_the_cap_are_refused_without_counting() {
        let t = Throttle::new(config());
        let key = Key::user("admin", ip(1));
        let mut now = Instant::now();
        fail(&t, key, &mut now);
        fail(&t, key, &mut now);
        // Two failures: turns one second apart, as many as fit in the cap.
        for second in 1..=8 {
            assert_eq!(t.admit(key, now), go(second * SECOND, 2));
        }
        assert_eq!(
            t.admit(key, now),
            Admission::Refused {
                retry_after: SECOND
            }
        );
        assert_eq!(
            t.admit(key, now + SECOND),
            go(8 * SECOND, 2),
            "once the queue is short enough, it waits at most the cap"
        );
    }

    #[test]
    fn success_forgets_the_pair() {
        let t = Throttle::new(config());
        let key = Key::user("admin", ip(1));
        let mut now = Instant::now();
        for _ in 0..4 {
            fail(&t, key, &mut now);
        }
        let Admission::Go { wait, failures } = t.admit(key, now) else {
            panic!("admitted after its turn");
        };
        assert_eq!((wait, failures), (4 * SECOND, 4));
        assert_eq!(t.finish(key, Some(true), now + wait), 0);
        assert_eq!(t.tracked(), 0);
        assert_eq!(t.admit(key, now + wait), go(Duration::ZERO, 0));
    }

    #[test]
    fn other_addresses_and_other_names_are_not_slowed() {
        let t = Throttle::new(config());
        let mut now = Instant::now();
        for _ in 0..5 {
            fail(&t, Key::user("admin", ip(1)), &mut now);
        }
        assert_eq!(
            t.admit(Key::user("admin", ip(2)), now),
            go(Duration::ZERO, 0)
        );
        assert_eq!(
            t.admit(Key::user("reader", ip(1)), now),
            go(Duration::ZERO, 0)
        );
        assert_eq!(t.admit(Key::token(ip(1)), now), go(Duration::ZERO, 0));
    }

    #[test]
    fn a_quiet_window_forgets_the_pair() {
        let t = Throttle::new(config());
        let key = Key::user("mallory", ip(1));
        let mut now = Instant::now();
        for _ in 0..3 {
            fail(&t, key, &mut now);
        }
        let admission = t.admit(key, now + 59 * SECOND);
        assert_eq!(admission, go(Duration::ZERO, 3), "still remembered");
        t.finish(key, None, now + 59 * SECOND);
        // Any attempt, refused or abandoned, counts as activity: the window restarts.
        assert_eq!(t.admit(key, now + 118 * SECOND), go(Duration::ZERO, 3));
        t.finish(key, None, now + 118 * SECOND);
        assert_eq!(t.admit(key, now + 178 * SECOND), go(Duration::ZERO, 0));
    }

    #[test]
    fn parallel_attempts_in_the_free_zone_wait_for_each_other() {
        let t = Throttle::new(config());
        let key = Key::user("admin", ip(1));
        let now = Instant::now();
        assert_eq!(t.admit(key, now), go(Duration::ZERO, 0));
        assert_eq!(t.admit(key, now), go(Duration::ZERO, 0));
        assert_eq!(t.admit(key, now), Admission::Busy);
        // Both fail: the pair is now throttled, and the waiting attempt takes a turn.
        t.finish(key, Some(false), now);
        t.finish(key, Some(false), now);
        assert_eq!(t.admit(key, now), go(SECOND, 2));
    }

    #[test]
    fn abandoned_attempts_free_their_slot_without_counting() {
        let t = Throttle::new(config());
        let key = Key::user("admin", ip(1));
        let now = Instant::now();
        t.admit(key, now);
        t.admit(key, now);
        assert_eq!(t.admit(key, now), Admission::Busy);
        assert_eq!(t.finish(key, None, now), 0);
        assert_eq!(t.admit(key, now), go(Duration::ZERO, 0));
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = Throttle::new(AuthConfig {
            max_tracked: 10,
            ..config()
        });
        let start = Instant::now();
        for i in 0..1000u32 {
            let mut now = start + i * SECOND / 1000;
            fail(&t, Key::user(&i.to_string(), ip(1)), &mut now);
            assert!(t.tracked() <= 10);
        }
        // The newest pairs are the ones remembered.
        assert_eq!(
            t.admit(Key::user("999", ip(1)), start + SECOND),
            go(Duration::ZERO, 1)
        );
    }
}
