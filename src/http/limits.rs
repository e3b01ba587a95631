//! What keeps one client from starving the others at the connection level: the
//! listening socket and its backlog, the caps on connections served at once (in all
//! and per peer address), the size of request headers, and the closing of a
//! connection whose request body was left unread.
//!
//! The timeouts themselves are actix's (`startup` sets them from `[server]`), except
//! the one on reading a JSON body, which is in `http::extract::JsonBody`.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::ApiError;
use crate::forwarded::TrustedProxies;

/// Binds `bind` with a listen queue of `backlog` connections. actix applies its own
/// backlog only to sockets it binds itself, and the server binds first to learn the
/// real port.
pub fn listen(bind: &str, backlog: u32) -> io::Result<TcpListener> {
    let mut last_error = None;
    for address in bind.to_socket_addrs()? {
        match listen_on(address, backlog) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

fn listen_on(address: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // As std does: a restarted server binds again while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// actix's own cap is per worker thread and, once reached, leaves new connections
/// unanswered in the backlog. It is set above [`ConnectionCounter`]'s limit so that
/// the connections past that limit are accepted and told 503 at once; it still bounds
/// the sockets a flood can make the server hold.
pub fn per_worker_cap(max_connections: usize) -> usize {
    max_connections.saturating_mul(2)
}

/// Open files kept out of `max_connections` when it is derived from the limit on open
/// files: the store's files, the log, the listener.
pub const RESERVED_FILES: u64 = 64;
/// The least `max_connections` derived from a small limit on open files.
const MIN_CONNECTIONS: usize = 16;
/// `max_connections` when the limit on open files cannot be read.
const FALLBACK_CONNECTIONS: usize = 256;

/// Raises the soft limit on open files to the hard one, as many servers do: each
/// connection holds a file. Returns the soft limit in force afterwards, if known.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            } else {
                log::warn!(
                    "could not raise the limit on open files from {} to {}: {}",
                    limit.rlim_cur,
                    limit.rlim_max,
                    io::Error::last_os_error()
                );
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
        Some(limit.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

/// The `max_connections` for a soft limit on open files: all of them but
/// [`RESERVED_FILES`], and at least a few.
pub fn max_connections_for(open_files: Option<u64>) -> usize {
    match open_files {
        Some(files) => usize::try_from(files.saturating_sub(RESERVED_FILES))
            .unwrap_or(usize::MAX)
            .max(MIN_CONNECTIONS),
        None => FALLBACK_CONNECTIONS,
    }
}

/// The cap on connections from all addresses: `configured`, else derived from the
/// limit on open files (raised first to its hard limit). Logs what it chose.
pub fn choose_max_connections(configured: Option<usize>) -> usize {
    let open_files = raise_open_file_limit();
    let shown = open_files.map_or("unknown".to_string(), |n| n.to_string());
    match configured {
        Some(max) => {
            if open_files.is_some_and(|files| max as u64 > files.saturating_sub(RESERVED_FILES)) {
                log::warn!(
                    "[server] max_connections = {max}, but the limit on open files is {shown}: \
                     past it, new connections wait unaccepted; raise the limit (LimitNOFILE= \
                     under systemd) or lower max_connections"
                );
            }
            log::info!("serving at most {max} connections (max_connections in config)");
            max
        }
        None => {
            let max = max_connections_for(open_files);
            log::info!(
                "serving at most {max} connections: the limit on open files ({shown}) less \
                 {RESERVED_FILES} for the store and logs; set [server] max_connections to choose"
            );
            max
        }
    }
}

/// Counts the open connections of the whole server and of each peer address, across
/// worker threads (actix's own cap, [`per_worker_cap`], is per worker).
///
/// A connection past a cap holds no slot: it is answered 503 at its first request and
/// closed. So the connections one address opens past its own cap never count against
/// the server's: they cannot turn other addresses away.
#[derive(Clone)]
pub struct ConnectionCounter {
    counts: Arc<Mutex<Counts>>,
    limit: usize,
    per_address: usize,
    proxies: Arc<TrustedProxies>,
    per_proxy: usize,
}

#[derive(Default)]
struct Counts {
    open: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl ConnectionCounter {
    pub fn new(limit: usize, per_address: usize) -> ConnectionCounter {
        ConnectionCounter {
            counts: Default::default(),
            limit,
            per_address,
            proxies: Default::default(),
            per_proxy: per_address,
        }
    }

    /// Trusted proxies get `per_proxy` connections each instead of the per-address cap.
    pub fn with_proxies(mut self, proxies: TrustedProxies, per_proxy: usize) -> Self {
        self.proxies = Arc::new(proxies);
        self.per_proxy = per_proxy;
        self
    }

    /// For `HttpServer::on_connect`: gives the new connection its slot, which it
    /// holds in its connection data until it closes, or the refusal its first request
    /// gets.
    pub fn on_connect(&self, io: &dyn Any, data: &mut Extensions) {
        match self.admit(peer_address(io)) {
            Ok(slot) => {
                data.insert(slot);
            }
            Err(refusal) => {
                data.insert(refusal);
            }
        }
    }

    /// The cap on the connections from `address`.
    ///
    /// A trusted proxy carries many clients' connections: it has its own cap.
    fn cap_for(&self, address: IpAddr) -> usize {
        if self.proxies.contains(address) {
            self.per_proxy
        } else {
            self.per_address
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock()
    }

    /// A slot for a connection from `address` (`None` when the peer is unknown: only
    /// the server's cap applies), or why there is none.
    fn admit(&self, address: Option<IpAddr>) -> Result<ConnectionSlot, ConnectionRefusal> {
        // An IPv4 address mapped into IPv6 counts as the IPv4 one.
        let address = address.map(|a| a.to_canonical());
        let mut counts = self.lock();
        if let Some(address) = address {
            let cap = self.cap_for(address);
            if counts.by_address.get(&address).copied().unwrap_or(0) >= cap {
                return Err(ConnectionRefusal::Address { limit: cap });
            }
        }
        if counts.open >= self.limit {
            return Err(ConnectionRefusal::Server { limit: self.limit });
        }
        counts.open += 1;
        if let Some(address) = address {
            *counts.by_address.entry(address).or_default() += 1;
        }
        Ok(ConnectionSlot {
            counter: self.clone(),
            address,
        })
    }
}

/// The peer's address of a new connection.
fn peer_address(io: &dyn Any) -> Option<IpAddr> {
    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::rt::net::TcpStream;
    let stream = match io.downcast_ref::<TcpStream>() {
        Some(plain) => plain,
        None => io.downcast_ref::<TlsStream<TcpStream>>()?.get_ref().0,
    };
    Some(stream.peer_addr().ok()?.ip())
}

/// One open connection, counted until the connection (and so this) is dropped.
pub struct ConnectionSlot {
    counter: ConnectionCounter,
    address: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.counter.lock();
        counts.open = counts.open.saturating_sub(1);
        if let Some(address) = self.address
            && let Some(count) = counts.by_address.get_mut(&address)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.by_address.remove(&address);
            }
        }
    }
}

/// Why a connection got no slot; its first request is answered with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// The server serves `max_connections` already.
    Server { limit: usize },
    /// The peer's address holds `max_connections_per_address` already.
    Address { limit: usize },
}

/// The 503 for a request on a connection that was opened past `max_connections` or
/// `max_connections_per_address`; it is answered before any work is done for it, and
/// the connection closed.
pub fn over_limit(req: &ServiceRequest) -> Option<ApiError> {
    Some(match *req.conn_data::<ConnectionRefusal>()? {
        ConnectionRefusal::Server { limit } => ApiError::TooManyConnections { limit },
        ConnectionRefusal::Address { limit } => ApiError::TooManyConnectionsFromAddress { limit },
    })
}

/// Set on a connection once a response on it said it is the last (`Connection:
/// close`, or a request that asked for that). actix still runs a request that was
/// pipelined behind such a response; the envelope refuses to, since the client took
/// the connection for closed.
#[derive(Clone, Default)]
pub struct ClosingConnection(Rc<Cell<bool>>);

impl ClosingConnection {
    pub fn close(&self) {
        self.0.set(true);
    }

    pub fn is_closing(&self) -> bool {
        self.0.get()
    }
}

/// The 431 for a request whose header names and values pass `limit` bytes in all.
/// (actix refuses, before this, a head over 128 KiB or with more than 96 headers, with
/// an empty 431.)
pub fn oversize_headers(req: &ServiceRequest, limit: usize) -> Option<ApiError> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    (size > limit).then_some(ApiError::HeadersTooLarge { size, limit })
}

/// Closes the connection when a request's body was not read to its end.
///
/// When a handler drops a chunked request body unread (a 401 before the body, a 413
/// halfway), actix reads and discards the rest to keep the connection alive — for as
/// long as the client sends it, so a body that never ends would hold the connection
/// forever. While the body is still held when the response is written, actix instead
/// closes the connection after `client_disconnect_timeout`. So the body is kept here,
/// and the handlers read it through a handle.
/// Takes the request's body into a hold (none for a request without one); the
/// handlers then read it through a handle. See [`keep_until_written`].
pub fn hold_body(req: &mut ServiceRequest) -> Option<BodyHold> {
    let body = req.parts_mut().1.take();
    if matches!(body, Payload::None) {
        return None;
    }
    let held = Rc::new(RefCell::new(body));
    let ended = Rc::new(Cell::new(false));
    req.set_payload(Payload::Stream {
        payload: Box::pin(SharedPayload(held.clone(), ended.clone())),
    });
    Some(BodyHold(held, ended))
}

/// Keeps the held request body alive until the response has been written.
pub fn keep_until_written(
    response: ServiceResponse<BoxBody>,
    hold: BodyHold,
) -> ServiceResponse<BoxBody> {
    response.map_body(|_, body| {
        BoxBody::new(HoldingBody {
            body,
            _request_body: hold.0,
        })
    })
}

/// A request body taken by [`hold_body`], and whether it was read to its end.
pub struct BodyHold(Rc<RefCell<Payload>>, Rc<Cell<bool>>);

impl BodyHold {
    /// Whether the handler read the body to its end (else actix closes the
    /// connection after the response).
    pub fn read_to_end(&self) -> bool {
        self.1.get()
    }
}

/// The handlers' handle on the request body that [`hold_body`] holds.
struct SharedPayload(Rc<RefCell<Payload>>, Rc<Cell<bool>>);

impl Stream for SharedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut payload = self.0.borrow_mut();
        let item = Pin::new(&mut *payload).poll_next(cx);
        if matches!(item, Poll::Ready(None)) {
            self.1.set(true);
        }
        item
    }
}

/// A response body that keeps the request body alive until it has been written.
struct HoldingBody {
    body: BoxBody,
    _request_body: Rc<RefCell<Payload>>,
}

impl MessageBody for HoldingBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn slots_count_open_connections() {
        let counter = ConnectionCounter::new(2, 10);
        let mut connections: Vec<Extensions> = (0..3)
            .map(|_| {
                let mut data = Extensions::new();
                counter.on_connect(&(), &mut data);
                data
            })
            .collect();
        let refused: Vec<Option<ConnectionRefusal>> = connections
            .iter()
            .map(|d| d.get::<ConnectionRefusal>().copied())
            .collect();
        assert_eq!(
            refused,
            [None, None, Some(ConnectionRefusal::Server { limit: 2 })]
        );
        connections.clear();
        assert_eq!(counter.lock().open, 0);
        let mut data = Extensions::new();
        counter.on_connect(&(), &mut data);
        assert!(data.get::<ConnectionSlot>().is_some());
    }

    #[test]
    fn one_address_cannot_take_the_slots_of_others() {
        let counter = ConnectionCounter::new(5, 2);
        let a = ip("127.0.0.1");
        let first: Vec<_> = (0..2).map(|_| counter.admit(a).unwrap()).collect();
        // Past its own cap, an address gets no slot, and takes none from the server.
        for _ in 0..10 {
            assert_eq!(
                counter.admit(a).err(),
                Some(ConnectionRefusal::Address { limit: 2 })
            );
        }
        // An IPv4 address mapped into IPv6 is the same address.
        assert!(counter.admit(ip("::ffff:127.0.0.1")).is_err());
        let others: Vec<_> = ["127.0.0.2", "::1", "10.0.0.1"]
            .iter()
            .map(|other| counter.admit(ip(other)).unwrap())
            .collect();
        assert_eq!(
            counter.admit(ip("10.0.0.2")).err(),
            Some(ConnectionRefusal::Server { limit: 5 })
        );
        drop(first);
        assert!(
            counter.admit(a).is_ok(),
            "a closed connection frees its slot"
        );
        drop(others);
        let counts = counter.lock();
        assert_eq!(counts.open, 0);
        assert!(
            counts.by_address.is_empty(),
            "no address is kept without a connection"
        );
    }

    #[test]
    fn a_trusted_proxy_has_its_own_cap() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".to_string()]).unwrap();
        let counter = ConnectionCounter::new(100, 2).with_proxies(proxies, 5);
        let proxy = ip("10.1.1.1");
        let held: Vec<_> = (0..5).map(|_| counter.admit(proxy).unwrap()).collect();
        assert_eq!(
            counter.admit(proxy).err(),
            Some(ConnectionRefusal::Address { limit: 5 })
        );
        let other = ip("192.0.2.1");
        let _two: Vec<_> = (0..2).map(|_| counter.admit(other).unwrap()).collect();
        assert!(
            counter.admit(other).is_err(),
            "others keep the per-address cap"
        );
        drop(held);
    }

    #[test]
    fn max_connections_follows_the_open_file_limit() {
        assert_eq!(max_connections_for(Some(1024)), 960);
        assert_eq!(max_connections_for(Some(1_048_576)), 1_048_512);
        assert_eq!(max_connections_for(Some(70)), MIN_CONNECTIONS);
        assert_eq!(max_connections_for(Some(0)), MIN_CONNECTIONS);
        assert_eq!(max_connections_for(None), FALLBACK_CONNECTIONS);
        assert_eq!(choose_max_connections(Some(7)), 7);
        let chosen = choose_max_connections(None);
        assert!(chosen >= MIN_CONNECTIONS, "{chosen}");
    }

    /// The backlog a listening socket was given, as `ss` shows it (its Send-Q): Linux
    /// has no socket option to read it back.
    #[cfg(target_os = "linux")]
    fn backlog_of(listener: &TcpListener) -> u32 {
        let port = listener.local_addr().unwrap().port();
        let output = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("`ss` (iproute2) shows the backlog of a listening socket");
        let text = String::from_utf8_lossy(&output.stdout);
        let columns: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(columns.first(), Some(&"LISTEN"), "ss printed {text:?}");
        columns[2].parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn listens_with_the_backlog_it_is_given() {
        for backlog in [8, 37] {
            let listener = listen("127.0.0.1:0", backlog).unwrap();
            assert_eq!(backlog_of(&listener), backlog);
        }
        assert!(listen("not an address", 8).is_err());
    }
}
