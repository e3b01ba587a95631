//! What keeps one client from starving the others at the connection level: the
//! listening socket and its backlog, the cap on connections served at once, the size
//! of request headers, and the closing of a connection whose request body was left
//! unread.
//!
//! The timeouts themselves are actix's (`startup` sets them from `[server]`), except
//! the one on reading a JSON body, which is in `routes::JsonBody`.

use std::any::Any;
use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::ApiError;

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

/// Counts the open connections of the whole server, across worker threads.
#[derive(Clone)]
pub struct ConnectionCounter {
    open: Arc<AtomicUsize>,
    limit: usize,
}

impl ConnectionCounter {
    pub fn new(limit: usize) -> ConnectionCounter {
        ConnectionCounter {
            open: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// For `HttpServer::on_connect`: gives the new connection its slot, which it
    /// holds in its connection data until it closes.
    pub fn on_connect(&self, _io: &dyn Any, data: &mut Extensions) {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        data.insert(ConnectionSlot {
            open: self.open.clone(),
            over_limit: open > self.limit,
            limit: self.limit,
        });
    }
}

/// One open connection, counted until the connection (and so this) is dropped.
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
    over_limit: bool,
    limit: usize,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The 503 for a request on a connection that was opened past `max_connections`; it
/// is answered before any work is done for it, and the connection closed.
pub fn over_limit(req: &ServiceRequest) -> Option<ApiError> {
    let slot = req.conn_data::<ConnectionSlot>()?;
    slot.over_limit
        .then_some(ApiError::TooManyConnections { limit: slot.limit })
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
    req.set_payload(Payload::Stream {
        payload: Box::pin(SharedPayload(held.clone())),
    });
    Some(BodyHold(held))
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

/// A request body taken by [`hold_body`].
pub struct BodyHold(Rc<RefCell<Payload>>);

/// The handlers' handle on the request body that [`hold_body`] holds.
struct SharedPayload(Rc<RefCell<Payload>>);

impl Stream for SharedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut payload = self.0.borrow_mut();
        Pin::new(&mut *payload).poll_next(cx)
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

    #[test]
    fn slots_count_open_connections() {
        let counter = ConnectionCounter::new(2);
        let mut connections: Vec<Extensions> = (0..3)
            .map(|_| {
                let mut data = Extensions::new();
                counter.on_connect(&(), &mut data);
                data
            })
            .collect();
        let over: Vec<bool> = connections
            .iter()
            .map(|d| d.get::<ConnectionSlot>().is_some_and(|s| s.over_limit))
            .collect();
        assert_eq!(over, [false, false, true]);
        connections.clear();
        assert_eq!(counter.open.load(Ordering::SeqCst), 0);
        let mut data = Extensions::new();
        counter.on_connect(&(), &mut data);
        assert!(data.get::<ConnectionSlot>().is_some_and(|s| !s.over_limit));
    }

    #[test]
    fn listens_with_a_backlog() {
        let listener = listen("127.0.0.1:0", 8).unwrap();
        assert!(listener.local_addr().unwrap().port() > 0);
        assert!(listen("not an address", 8).is_err());
    }
}
