//! [`Authorized`], the extractor that enforces a route's policy.
//!
//! A handler names the policy it needs in its signature (`Authorized<DeleteImage>`),
//! and `Authorized` is the only way for a handler to reach the store: it authenticates
//! the caller and gets a [`Granted`] proof, which the store is handed out against. A
//! route without its check does not compile.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};

use crate::app::{AppState, PageCache};
use crate::domain::access::{Granted, Policy, User};
use crate::error::ApiError;
use crate::store::{Author, Permit, Store};

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
