//! Hub methods as plain async functions, registered by name (axum's macro-free handler idea over tuples).
//!
//! A method is any `async fn(P1, …, Pn) -> R` (up to 12 parameters) where each parameter is either
//! * a positional argument: any `DeserializeOwned` type, decoded from JSON or MessagePack on call, or a
//!   [`RawValue`], kept undecoded to pass on to clients of either protocol unchanged;
//! * an extractor: [`Caller`], [`HubContext`], [`State<S>`], a [`CancellationToken`] (cancelled when the client
//!   cancels a stream or disconnects), or a [`ClientStream<T>`] bound to the next client-to-server stream;
//!
//! and `R` is `()`, any `Serialize` value, `Result<T, E>` with `E: Into<HubError>`, a [`Streamed`] for a
//! server-to-client stream, or `Result<Streamed, E>`. Which kind a parameter is follows from its type through a
//! marker type parameter, so no macro is needed to register a method: [`Handler`], [`FromInvocation`] and
//! [`IntoReply`] are implemented for every qualifying function and type, and are not meant to be implemented
//! by hand.
//!
//! ```no_run
//! use futures_util::{stream, StreamExt};
//! use hubmesh::{Caller, ClientStream, Hub, HubError, State, Streamed};
//!
//! #[derive(Clone)]
//! struct Greeting(String);
//!
//! // A positional argument and an extractor: `connection.invoke("Greet", "ada")`.
//! async fn greet(State(greeting): State<Greeting>, caller: Caller, name: String) -> String {
//!     format!("{} {name} ({})", greeting.0, caller.connection_id())
//! }
//! // A server-to-client stream: `connection.stream("Count", 3)`.
//! async fn count(to: u32) -> Streamed {
//!     Streamed::new(stream::iter(0..to))
//! }
//! // A client-to-server stream: `connection.invoke("Sum", subject)`.
//! async fn sum(mut numbers: ClientStream<i64>) -> Result<i64, HubError> {
//!     let mut total = 0;
//!     while let Some(number) = numbers.next().await {
//!         total += number?;
//!     }
//!     Ok(total)
//! }
//!
//! let hub = Hub::new("tools")
//!     .with_state(Greeting("Hello".into()))
//!     .method("Greet", greet)
//!     .method("Count", count)
//!     .method("Sum", sum);
//! ```

use std::any::{Any, TypeId};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Caller, HubContext, HubError};
use crate::connection::{EncodeValue, UploadItem};
use crate::protocol::RawValue;

/// What one call of a method starts from (the hub layer's, not part of the API).
#[doc(hidden)]
pub struct InvocationParts {
    pub(crate) caller: Caller,
    pub(crate) arguments: std::vec::IntoIter<RawValue>,
    pub(crate) uploads: std::vec::IntoIter<mpsc::Receiver<UploadItem>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) state: Option<Arc<dyn Any + Send + Sync>>,
}

/// What a method produced, before its errors are turned into the texts clients see (the hub layer's, not part of
/// the API).
#[doc(hidden)]
pub enum HubReply {
    /// No value.
    Void,
    /// A value.
    Value(Box<dyn EncodeValue>),
    /// An error.
    Error(HubError),
    /// A stream of values.
    Stream(BoxStream<'static, Result<Box<dyn EncodeValue>, HubError>>),
}

/// A parameter of a hub method. `M` is a marker that tells arguments from extractors.
pub trait FromInvocation<M>: Sized + Send + 'static {
    /// How many positional arguments this parameter consumes.
    const ARGUMENTS: usize;
    /// How many client-to-server streams this parameter consumes.
    const STREAMS: usize;
    /// Takes the parameter from the call.
    #[doc(hidden)]
    fn from_invocation(parts: &mut InvocationParts) -> Result<Self, HubError>;
}

/// Marker: a positional argument.
#[doc(hidden)]
pub struct Argument;
/// Marker: an extractor.
#[doc(hidden)]
pub struct Extractor;

const BINDING_ERROR: &str =
    "Error binding arguments. Make sure that the types of the provided values match the types of the hub method being invoked.";

impl<T: DeserializeOwned + Send + 'static> FromInvocation<Argument> for T {
    const ARGUMENTS: usize = 1;
    const STREAMS: usize = 0;
    fn from_invocation(parts: &mut InvocationParts) -> Result<Self, HubError> {
        let raw = parts
            .arguments
            .next()
            .ok_or_else(|| HubError::Binding(BINDING_ERROR.into()))?;
        raw.deserialize::<T>().map_err(|error| {
            tracing::debug!(%error, "argument binding failed");
            HubError::Binding(BINDING_ERROR.into())
        })
    }
}

impl FromInvocation<Extractor> for Caller {
    const ARGUMENTS: usize = 0;
    const STREAMS: usize = 0;
    fn from_invocation(parts: &mut InvocationParts) -> Result<Self, HubError> {
        Ok(parts.caller.clone())
    }
}

impl FromInvocation<Extractor> for HubContext {
    const ARGUMENTS: usize = 0;
    const STREAMS: usize = 0;
    fn from_invocation(parts: &mut InvocationParts) -> Result<Self, HubError> {
        Ok(parts.caller.context().clone())
    }
}

impl FromInvocation<Extractor> for CancellationToken {
    const ARGUMENTS: usize = 0;
    const STREAMS: usize = 0;
    fn from_invocation(parts: &mut InvocationParts) -> Result<Self, HubError> {
        Ok(parts.cancel.clone())
    }
}

/// Marker: a positional argument kept undecoded.
#[doc(hidden)]
pub struct Undecoded;

/// An argument taken as it came ([`RawValue`]), to pass it on to other clients of either protocol unchanged.
impl FromInvocation<Undecoded> for RawValue {
    const ARGUMENTS: usize = 1;
    const STREAMS: usize = 0;
    fn from_invocation(parts: &mut InvocationParts) -> Result<Self, HubError> {
        parts
            .arguments
            .next()
            .ok_or_else(|| HubError::Binding(BINDING_ERROR.into()))
    }
}

/// Shared state given to the hub with [`crate::Hub::with_state`].
#[derive(Debug, Clone)]
pub struct State<S>(pub S);

impl<S: Clone + Send + Sync + 'static> FromInvocation<Extractor> for State<S> {
    const ARGUMENTS: usize = 0;
    const STREAMS: usize = 0;
    fn from_invocation(parts: &mut InvocationParts) -> Result<Self, HubError> {
        parts
            .state
            .as_ref()
            .and_then(|state| state.downcast_ref::<S>())
            .map(|state| State(state.clone()))
            .ok_or_else(|| HubError::exception("InvalidOperationException", "The hub has no state of this type."))
    }
}

/// A client-to-server stream bound to a method parameter. Items that fail to decode, or a client-side error,
/// arrive as `Err` (the client's error as a [`HubError::Hub`], as ASP.NET surfaces it).
pub struct ClientStream<T> {
    items: mpsc::Receiver<UploadItem>,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Send + 'static> FromInvocation<Extractor> for ClientStream<T> {
    const ARGUMENTS: usize = 0;
    const STREAMS: usize = 1;
    fn from_invocation(parts: &mut InvocationParts) -> Result<Self, HubError> {
        let items = parts
            .uploads
            .next()
            .ok_or_else(|| HubError::Binding("A stream parameter has no stream.".into()))?;
        Ok(ClientStream {
            items,
            _item: std::marker::PhantomData,
        })
    }
}

impl<T: DeserializeOwned> Stream for ClientStream<T> {
    type Item = Result<T, HubError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.poll_recv(cx).map(|item| {
            item.map(|item| match item {
                Ok(raw) => raw
                    .deserialize::<T>()
                    .map_err(|_| HubError::Binding(BINDING_ERROR.into())),
                Err(client_error) => Err(HubError::Hub(client_error)),
            })
        })
    }
}

/// A server-to-client stream returned by a hub method.
pub struct Streamed(BoxStream<'static, Result<Box<dyn EncodeValue>, HubError>>);

impl Streamed {
    /// A stream of values.
    pub fn new<S, T>(items: S) -> Streamed
    where
        S: Stream<Item = T> + Send + 'static,
        T: Serialize + Send + 'static,
    {
        Streamed(items.map(|item| Ok(Box::new(item) as Box<dyn EncodeValue>)).boxed())
    }

    /// A stream that may fail: an `Err` item ends it with that error.
    pub fn try_new<S, T, E>(items: S) -> Streamed
    where
        S: Stream<Item = Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: Into<HubError> + Send + 'static,
    {
        Streamed(
            items
                .map(|item| {
                    item.map(|value| Box::new(value) as Box<dyn EncodeValue>)
                        .map_err(Into::into)
                })
                .boxed(),
        )
    }
}

/// What a hub method may return. `M` is a marker that tells the kinds of return type apart.
pub trait IntoReply<M>: Send + 'static {
    /// Whether the method is a streaming one (`connection.stream(...)` on the client).
    const STREAMING: bool;
    /// Converts the return value.
    #[doc(hidden)]
    fn into_reply(self) -> HubReply;
}

/// Marker: a plain value.
#[doc(hidden)]
pub struct PlainValue;
/// Marker: a `Result`.
#[doc(hidden)]
pub struct FallibleValue;
/// Marker: a stream.
#[doc(hidden)]
pub struct StreamValue;
/// Marker: a `Result` of a stream.
#[doc(hidden)]
pub struct FallibleStream;

fn value_reply<T: Serialize + Send + 'static>(value: T) -> HubReply {
    // `()` is `Serialize` (as null), but a void method's completion carries no result at all.
    if TypeId::of::<T>() == TypeId::of::<()>() {
        HubReply::Void
    } else {
        HubReply::Value(Box::new(value))
    }
}

impl<T: Serialize + Send + 'static> IntoReply<PlainValue> for T {
    const STREAMING: bool = false;
    fn into_reply(self) -> HubReply {
        value_reply(self)
    }
}

impl<T, E> IntoReply<FallibleValue> for Result<T, E>
where
    T: Serialize + Send + 'static,
    E: Into<HubError> + Send + 'static,
{
    const STREAMING: bool = false;
    fn into_reply(self) -> HubReply {
        match self {
            Ok(value) => value_reply(value),
            Err(error) => HubReply::Error(error.into()),
        }
    }
}

impl IntoReply<StreamValue> for Streamed {
    const STREAMING: bool = true;
    fn into_reply(self) -> HubReply {
        HubReply::Stream(self.0)
    }
}

impl<E: Into<HubError> + Send + 'static> IntoReply<FallibleStream> for Result<Streamed, E> {
    const STREAMING: bool = true;
    fn into_reply(self) -> HubReply {
        match self {
            Ok(stream) => HubReply::Stream(stream.0),
            Err(error) => HubReply::Error(error.into()),
        }
    }
}

/// A hub method. Implemented for async functions and closures whose parameters and return type qualify (see
/// the module doc); `T` is inferred.
pub trait Handler<T>: Clone + Send + Sync + 'static {
    /// Whether this is a streaming method.
    const STREAMING: bool;
    /// Calls the method.
    #[doc(hidden)]
    fn call(&self, parts: InvocationParts) -> BoxFuture<'static, HubReply>;
}

fn check_arity(parts: &InvocationParts, arguments: usize, streams: usize) -> Result<(), HubError> {
    let given = parts.arguments.len();
    if given != arguments {
        return Err(HubError::Binding(format!(
            "Invocation provides {given} argument(s) but target expects {arguments}."
        )));
    }
    let given = parts.uploads.len();
    if given != streams {
        return Err(HubError::Binding(format!(
            "Client sent {given} stream(s), Hub method expects {streams}."
        )));
    }
    Ok(())
}

macro_rules! impl_handler {
    ($($param:ident $marker:ident),*) => {
        #[allow(non_snake_case, unused_mut, unused_variables)]
        impl<F, Fut, R, MR, $($param, $marker,)*> Handler<(MR, $(($param, $marker),)*)> for F
        where
            F: Fn($($param),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoReply<MR>,
            MR: 'static,
            $($param: FromInvocation<$marker>, $marker: 'static,)*
        {
            const STREAMING: bool = R::STREAMING;

            fn call(&self, mut parts: InvocationParts) -> BoxFuture<'static, HubReply> {
                let arguments = 0 $(+ $param::ARGUMENTS)*;
                let streams = 0 $(+ $param::STREAMS)*;
                if let Err(error) = check_arity(&parts, arguments, streams) {
                    return Box::pin(std::future::ready(HubReply::Error(error)));
                }
                $(
                    let $param = match $param::from_invocation(&mut parts) {
                        Ok(value) => value,
                        Err(error) => return Box::pin(std::future::ready(HubReply::Error(error))),
                    };
                )*
                let future = (self)($($param),*);
                Box::pin(async move { future.await.into_reply() })
            }
        }
    };
}

impl_handler!();
impl_handler!(P1 M1);
impl_handler!(P1 M1, P2 M2);
impl_handler!(P1 M1, P2 M2, P3 M3);
impl_handler!(P1 M1, P2 M2, P3 M3, P4 M4);
impl_handler!(P1 M1, P2 M2, P3 M3, P4 M4, P5 M5);
impl_handler!(P1 M1, P2 M2, P3 M3, P4 M4, P5 M5, P6 M6);
impl_handler!(P1 M1, P2 M2, P3 M3, P4 M4, P5 M5, P6 M6, P7 M7);
impl_handler!(P1 M1, P2 M2, P3 M3, P4 M4, P5 M5, P6 M6, P7 M7, P8 M8);
impl_handler!(P1 M1, P2 M2, P3 M3, P4 M4, P5 M5, P6 M6, P7 M7, P8 M8, P9 M9);
impl_handler!(P1 M1, P2 M2, P3 M3, P4 M4, P5 M5, P6 M6, P7 M7, P8 M8, P9 M9, P10 M10);
impl_handler!(P1 M1, P2 M2, P3 M3, P4 M4, P5 M5, P6 M6, P7 M7, P8 M8, P9 M9, P10 M10, P11 M11);
impl_handler!(P1 M1, P2 M2, P3 M3, P4 M4, P5 M5, P6 M6, P7 M7, P8 M8, P9 M9, P10 M10, P11 M11, P12 M12);
