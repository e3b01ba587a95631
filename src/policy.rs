//! The policies of SPEC §1 and [`Authorized`], the extractor that enforces them.
//!
//! A handler names the policy it needs in its signature (`Authorized<DeleteImage>`),
//! and `Authorized` is the only way for a handler to reach the store: a route without
//! its check does not compile.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};

use crate::config::User;
use crate::error::ApiError;
use crate::listing::PageCache;
use crate::startup::AppState;
use crate::store::Store;

pub trait Policy: 'static {
    const NAME: &'static str;
}

macro_rules! policies {
    ($($(#[$doc:meta])* $ty:ident = $name:literal;)*) => {
        $( $(#[$doc])* pub struct $ty; impl Policy for $ty { const NAME: &'static str = $name; } )*
        /// Every policy name; config may only name these.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

policies! {
    /// List and show images.
    ReadImages = "read_images";
    /// Create and update images.
    CreateImage = "create_image";
    /// Delete images.
    DeleteImage = "delete_image";
    /// Read the audit trail.
    ReadAudit = "read_audit";
}

/// The authenticated user's name, left in the request for the access log.
#[derive(Clone, Debug)]
pub struct AuthenticatedUser(pub Arc<User>);

/// Proof that the caller authenticated and holds policy `P`.
pub struct Authorized<P: Policy> {
    user: Arc<User>,
    state: web::Data<AppState>,
    _policy: PhantomData<P>,
}

impl<P: Policy> Authorized<P> {
    pub fn user(&self) -> &str {
        &self.user.name
    }

    pub fn store(&self) -> &Store {
        self.state.store(self)
    }

    pub fn pages(&self) -> &PageCache {
        self.state.pages(self)
    }

    pub fn state(&self) -> &AppState {
        &self.state
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
            let client = req.peer_addr().map(|a| a.ip());
            let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
            let user = state.authenticate(header, client).await?;
            req.extensions_mut().insert(AuthenticatedUser(user.clone()));
            if !user.holds(P::NAME) {
                return Err(ApiError::Forbidden {
                    user: user.name.clone(),
                    policy: P::NAME,
                });
            }
            Ok(Authorized {
                user,
                state,
                _policy: PhantomData,
            })
        })
    }
}
