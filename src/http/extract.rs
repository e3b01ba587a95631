//! The extractors: [`Authorized`], which enforces a route's policy, and [`JsonBody`],
//! the request body read only once the policy is checked.
//!
//! A handler names the policy it needs in its signature (`Authorized<DeleteImage>`),
//! and `Authorized` is the only way for a handler to reach the store: it authenticates
//! the caller and gets a [`Granted`] proof, which the store is handed out against. A
//! route without its check does not compile.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use futures_util::StreamExt;

use crate::app::{AppState, PageCache};
use crate::domain::access::{Author, Granted, Permit, Policy, User};
use crate::error::ApiError;
use crate::http::headers::{is_identity_encoding, is_json_content_type};
use crate::store::Store;

/// Where a request came from: its TCP peer, or behind a trusted proxy the client
/// that `X-Forwarded-For` names. What the access log and the brute-force throttle use.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub std::net::IpAddr);

/// The authenticated user's name, left in the request for the access log.
#[derive(Clone, Debug)]
pub struct AuthenticatedUser(pub Arc<User>);

/// Proof that the caller authenticated and holds policy `P`.
pub struct Authorized<P: Policy> {
    granted: Granted<P>,
    state: web::Data<AppState>,
}

impl<P: Policy> Authorized<P> {
    pub fn user(&self) -> &str {
        &self.granted.user().name
    }

    /// The caller as the author of a change, which the store applies only if the
    /// caller still holds `P` then.
    pub fn author(&self) -> Author {
        Author::new(
            self.user(),
            Arc::new(HeldPolicy::<P> {
                state: self.state.clone(),
                user: self.user().to_owned(),
                _policy: std::marker::PhantomData,
            }),
        )
    }

    pub fn store(&self) -> &Store {
        self.state.store(&self.granted)
    }

    pub fn pages(&self) -> &PageCache {
        self.state.pages(&self.granted)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Whether the caller also holds `Q` (as authenticated: what a response may show,
    /// such as the images in audit records).
    pub fn also_holds<Q: Policy>(&self) -> bool {
        self.granted.user().holds(Q::NAME)
    }
}

/// Whether `user` still holds `P` in the access table in force.
struct HeldPolicy<P: Policy> {
    state: web::Data<AppState>,
    user: String,
    _policy: std::marker::PhantomData<fn() -> P>,
}

impl<P: Policy> Permit for HeldPolicy<P> {
    fn still_held(&self) -> Result<(), &'static str> {
        if self.state.holds_now(&self.user, P::NAME) {
            Ok(())
        } else {
            Err(P::NAME)
        }
    }
}

impl<P: Policy> FromRequest for Authorized<P> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or(ApiError::StoreUnavailable)?;
            let client = req
                .extensions()
                .get::<ClientAddress>()
                .map(|c| c.0)
                .or_else(|| req.peer_addr().map(|a| a.ip()));
            let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
            let user = state.authenticate(header, client).await?;
            req.extensions_mut().insert(AuthenticatedUser(user.clone()));
            let granted = Granted::check(user).map_err(|user| ApiError::Forbidden {
                user: user.name.clone(),
                policy: P::NAME,
            })?;
            Ok(Authorized { granted, state })
        })
    }
}

/// A JSON request body, read only when the handler asks: after the `Authorized`
/// argument has run, so an unauthenticated client learns nothing from 415 or 413.
pub struct JsonBody {
    content_type: Option<Vec<u8>>,
    /// Every `Content-Encoding` header, joined with ", ".
    content_encoding: Option<Vec<u8>>,
    content_length: Option<usize>,
    limit: usize,
    timeout: Duration,
    payload: Payload,
}

impl FromRequest for JsonBody {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>();
        let limit = state.map_or(65536, |s| s.max_body_bytes);
        let timeout = state.map_or(Duration::from_secs(10), |s| s.body_timeout);
        let header = |name| req.headers().get(name).map(|v| v.as_bytes());
        let mut encodings = req
            .headers()
            .get_all(CONTENT_ENCODING)
            .map(|v| v.as_bytes());
        let content_encoding = encodings.next().map(|first| {
            encodings.fold(first.to_vec(), |mut all, more| {
                all.extend_from_slice(b", ");
                all.extend_from_slice(more);
                all
            })
        });
        ready(Ok(JsonBody {
            content_type: header(CONTENT_TYPE).map(<[u8]>::to_vec),
            content_encoding,
            content_length: header(CONTENT_LENGTH)
                .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok()),
            limit,
            timeout,
            payload: payload.take(),
        }))
    }
}

impl JsonBody {
    pub async fn read(mut self) -> Result<Bytes, ApiError> {
        match &self.content_type {
            Some(ct) if is_json_content_type(ct) => {}
            Some(ct) => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "'{}'",
                    String::from_utf8_lossy(ct)
                )));
            }
            None => return Err(ApiError::UnsupportedMediaType("no Content-Type".into())),
        }
        if let Some(encoding) = &self.content_encoding
            && !is_identity_encoding(encoding)
        {
            return Err(ApiError::UnsupportedEncoding(
                String::from_utf8_lossy(encoding).into_owned(),
            ));
        }
        if self.content_length.is_some_and(|n| n > self.limit) {
            return Err(ApiError::PayloadTooLarge { limit: self.limit });
        }
        // One deadline for the whole body, so a client trickling a byte at a time is
        // cut off as surely as one that stops.
        actix_web::rt::time::timeout(self.timeout, collect(&mut self.payload, self.limit))
            .await
            .unwrap_or(Err(ApiError::BodyTimeout {
                ms: self.timeout.as_millis(),
            }))
    }
}

async fn collect(payload: &mut Payload, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
