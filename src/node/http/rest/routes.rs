//! Which REST call a request is: its path (version 2022-06-01 paths, segments percent-decoded) and method, and the
//! query parameters the calls take (`application`, `excluded`, `excludedUsers`, `reason`, `api-version`). Parsing
//! only.

use actix_web::http::Method;

/// The API version whose paths these are; a request naming another version is refused.
pub(super) const API_VERSION: &str = "2022-06-01";

/// At most this many `excluded` connection ids per send (more: 400).
pub(super) const MAX_EXCLUDED: usize = 1000;
/// At most this many `excludedUsers` per send (more: 400); each costs a member lookup at the user's owner.
pub(super) const MAX_EXCLUDED_USERS: usize = 100;
/// The longest group name, in characters (Azure's limit; longer: 400).
pub(super) const MAX_GROUP_NAME: usize = 1024;

/// A REST call, with its path parameters decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    /// `HEAD|GET /api/health`.
    Health,
    /// `POST /api/hubs/{hub}/:send`.
    SendAll { hub: String },
    /// `POST /api/hubs/{hub}/groups/{group}/:send`.
    SendGroup { hub: String, group: String },
    /// `POST /api/hubs/{hub}/users/{user}/:send`.
    SendUser { hub: String, user: String },
    /// `POST /api/hubs/{hub}/connections/{id}/:send`.
    SendConnection { hub: String, connection: String },
    /// `PUT|DELETE /api/hubs/{hub}/groups/{group}/connections/{id}`.
    GroupConnection {
        hub: String,
        group: String,
        connection: String,
        add: bool,
    },
    /// `PUT|DELETE /api/hubs/{hub}/users/{user}/groups/{group}`.
    UserGroup {
        hub: String,
        user: String,
        group: String,
        add: bool,
    },
    /// `HEAD /api/hubs/{hub}/users/{user}/groups/{group}`.
    UserInGroup { hub: String, user: String, group: String },
    /// `HEAD /api/hubs/{hub}/connections/{id}`.
    ConnectionExists { hub: String, connection: String },
    /// `DELETE /api/hubs/{hub}/connections/{id}`.
    CloseConnection { hub: String, connection: String },
    /// `DELETE /api/hubs/{hub}/connections/{id}/groups`: the connection leaves every group.
    ConnectionLeaveAll { hub: String, connection: String },
    /// `DELETE /api/hubs/{hub}/users/{user}/groups`: every connection of the user leaves every group.
    UserLeaveAll { hub: String, user: String },
    /// `HEAD /api/hubs/{hub}/groups/{group}`.
    GroupExists { hub: String, group: String },
    /// `HEAD /api/hubs/{hub}/users/{user}`.
    UserExists { hub: String, user: String },
    /// `POST /api/hubs/{hub}/:closeConnections`.
    CloseAll { hub: String },
    /// `POST /api/hubs/{hub}/groups/{group}/:closeConnections`.
    CloseGroup { hub: String, group: String },
    /// `POST /api/hubs/{hub}/users/{user}/:closeConnections`.
    CloseUser { hub: String, user: String },
}

impl Call {
    /// The hub the call addresses (none for the health check).
    pub(super) fn hub(&self) -> Option<&str> {
        match self {
            Call::Health => None,
            Call::SendAll { hub }
            | Call::SendGroup { hub, .. }
            | Call::SendUser { hub, .. }
            | Call::SendConnection { hub, .. }
            | Call::GroupConnection { hub, .. }
            | Call::UserGroup { hub, .. }
            | Call::UserInGroup { hub, .. }
            | Call::ConnectionExists { hub, .. }
            | Call::CloseConnection { hub, .. }
            | Call::ConnectionLeaveAll { hub, .. }
            | Call::UserLeaveAll { hub, .. }
            | Call::GroupExists { hub, .. }
            | Call::UserExists { hub, .. }
            | Call::CloseAll { hub }
            | Call::CloseGroup { hub, .. }
            | Call::CloseUser { hub, .. } => Some(hub),
        }
    }

    /// Whether the call carries a message body.
    pub(super) fn is_send(&self) -> bool {
        matches!(
            self,
            Call::SendAll { .. } | Call::SendGroup { .. } | Call::SendUser { .. } | Call::SendConnection { .. }
        )
    }
}

/// Why a request under `/api/` is not a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NotACall {
    /// No call has this path.
    NoRoute,
    /// The path is a call's, the method is not.
    Method,
    /// A path segment is not valid percent-encoded UTF-8, or is empty.
    BadSegment,
    /// A group name is longer than [`MAX_GROUP_NAME`].
    LongGroupName,
}

/// Whether `path` (as sent) is under the REST API's prefix.
pub(super) fn is_rest_path(path: &str) -> bool {
    path == "/api/health" || path.starts_with("/api/hubs/")
}

/// The call `method` and `path` (as sent, percent-encoded) make.
pub(super) fn route(method: &Method, path: &str) -> Result<Call, NotACall> {
    let path = path.trim_end_matches('/');
    if path == "/api/health" {
        return if *method == Method::HEAD || *method == Method::GET {
            Ok(Call::Health)
        } else {
            Err(NotACall::Method)
        };
    }
    let rest = path.strip_prefix("/api/hubs/").ok_or(NotACall::NoRoute)?;
    let raw: Vec<&str> = rest.split('/').collect();
    // Literal segments are compared as sent; parameters are decoded.
    let decoded = |index: usize| -> Result<String, NotACall> {
        raw.get(index)
            .and_then(|segment| percent_decode(segment))
            .filter(|value| !value.is_empty())
            .ok_or(NotACall::BadSegment)
    };
    let group = |index: usize| -> Result<String, NotACall> {
        let name = decoded(index)?;
        if name.chars().count() > MAX_GROUP_NAME {
            return Err(NotACall::LongGroupName);
        }
        Ok(name)
    };
    let hub = decoded(0)?;
    let allow = |expected: &[Method]| {
        if expected.contains(method) {
            Ok(())
        } else {
            Err(NotACall::Method)
        }
    };
    let call = match raw.as_slice() {
        [_, ":send"] => {
            allow(&[Method::POST])?;
            Call::SendAll { hub }
        }
        [_, "groups", _, ":send"] => {
            allow(&[Method::POST])?;
            Call::SendGroup { hub, group: group(2)? }
        }
        [_, ":closeConnections"] => {
            allow(&[Method::POST])?;
            Call::CloseAll { hub }
        }
        [_, "groups", _, ":closeConnections"] => {
            allow(&[Method::POST])?;
            Call::CloseGroup { hub, group: group(2)? }
        }
        [_, "users", _, ":closeConnections"] => {
            allow(&[Method::POST])?;
            Call::CloseUser { hub, user: decoded(2)? }
        }
        [_, "users", _, ":send"] => {
            allow(&[Method::POST])?;
            Call::SendUser { hub, user: decoded(2)? }
        }
        [_, "connections", _, ":send"] => {
            allow(&[Method::POST])?;
            Call::SendConnection {
                hub,
                connection: decoded(2)?,
            }
        }
        [_, "groups", _, "connections", _] => {
            allow(&[Method::PUT, Method::DELETE])?;
            Call::GroupConnection {
                hub,
                group: group(2)?,
                connection: decoded(4)?,
                add: *method == Method::PUT,
            }
        }
        [_, "users", _, "groups", _] => {
            allow(&[Method::PUT, Method::DELETE, Method::HEAD])?;
            let (user, group) = (decoded(2)?, group(4)?);
            if *method == Method::HEAD {
                Call::UserInGroup { hub, user, group }
            } else {
                Call::UserGroup {
                    hub,
                    user,
                    group,
                    add: *method == Method::PUT,
                }
            }
        }
        [_, "connections", _, "groups"] => {
            allow(&[Method::DELETE])?;
            Call::ConnectionLeaveAll {
                hub,
                connection: decoded(2)?,
            }
        }
        [_, "users", _, "groups"] => {
            allow(&[Method::DELETE])?;
            Call::UserLeaveAll { hub, user: decoded(2)? }
        }
        [_, "connections", _] => {
            allow(&[Method::HEAD, Method::DELETE])?;
            let connection = decoded(2)?;
            if *method == Method::HEAD {
                Call::ConnectionExists { hub, connection }
            } else {
                Call::CloseConnection { hub, connection }
            }
        }
        [_, "groups", _] => {
            allow(&[Method::HEAD])?;
            Call::GroupExists { hub, group: group(2)? }
        }
        [_, "users", _] => {
            allow(&[Method::HEAD])?;
            Call::UserExists { hub, user: decoded(2)? }
        }
        _ => return Err(NotACall::NoRoute),
    };
    Ok(call)
}

/// Decodes `%XX` escapes of a path segment (`+` stays a plus: that is a query rule); `None` for a bad escape or
/// bytes that are not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            let hex = bytes.get(index + 1..index + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            index += 3;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query parameters of a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Query {
    /// `application`: the application the hub belongs to; Azure names the hub `{application}_{hub}`.
    pub(super) application: Option<String>,
    /// `excluded`: connection ids a send skips.
    pub(super) excluded: Vec<String>,
    /// `excludedUsers`: users whose connections a send skips.
    pub(super) excluded_users: Vec<String>,
    /// `reason`: why a connection is closed.
    pub(super) reason: Option<String>,
}

/// Why a query was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum QueryError {
    /// `api-version` names another version.
    #[error("api-version '{0}' is not supported; this node serves {API_VERSION}")]
    Version(String),
    /// Too many `excluded` or `excludedUsers` values.
    #[error("at most {limit} values of '{name}' are accepted")]
    TooMany { name: &'static str, limit: usize },
    /// An `application` name that does not start with a letter or has characters other than letters, digits
    /// and underscores (Azure's rule).
    #[error("application '{0}' must start with a letter and contain only letters, digits and underscores")]
    Application(String),
}

impl Query {
    /// The hub a call on path hub `hub` addresses: `{application}_{hub}` when an application is named.
    pub(super) fn hub_name(&self, hub: &str) -> String {
        match &self.application {
            Some(application) => format!("{application}_{hub}"),
            None => hub.to_owned(),
        }
    }
}

/// Whether `name` is a valid application name: a letter first, then letters, digits and underscores.
fn valid_application(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphabetic())
        && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_')
}

/// Reads the query string of a call (`excluded` may repeat, or list ids separated by commas).
pub(super) fn query(query: &str) -> Result<Query, QueryError> {
    let mut parsed = Query::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let values = value.split(',').map(str::trim).filter(|value| !value.is_empty());
        match &*key {
            "api-version" if value != API_VERSION => return Err(QueryError::Version(value.into_owned())),
            "excluded" => parsed.excluded.extend(values.map(str::to_owned)),
            "excludedUsers" => parsed.excluded_users.extend(values.map(str::to_owned)),
            "reason" => parsed.reason = Some(value.into_owned()),
            "application" if !valid_application(&value) => return Err(QueryError::Application(value.into_owned())),
            "application" => parsed.application = Some(value.into_owned()),
            _ => {}
        }
        if parsed.excluded.len() > MAX_EXCLUDED {
            return Err(QueryError::TooMany {
                name: "excluded",
                limit: MAX_EXCLUDED,
            });
        }
        if parsed.excluded_users.len() > MAX_EXCLUDED_USERS {
            return Err(QueryError::TooMany {
                name: "excludedUsers",
                limit: MAX_EXCLUDED_USERS,
            });
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_is_routed_with_decoded_parameters() {
        let cases = [
            (Method::HEAD, "/api/health", Call::Health),
            (Method::POST, "/api/hubs/chat/:send", Call::SendAll { hub: "chat".into() }),
            (
                Method::POST,
                "/api/hubs/chat/groups/room%201/:send",
                Call::SendGroup {
                    hub: "chat".into(),
                    group: "room 1".into(),
                },
            ),
            (
                Method::POST,
                "/api/hubs/chat/users/a%2Fb/:send",
                Call::SendUser {
                    hub: "chat".into(),
                    user: "a/b".into(),
                },
            ),
            (
                Method::PUT,
                "/api/hubs/chat/groups/g/connections/c.node-1",
                Call::GroupConnection {
                    hub: "chat".into(),
                    group: "g".into(),
                    connection: "c.node-1".into(),
                    add: true,
                },
            ),
            (
                Method::DELETE,
                "/api/hubs/chat/users/u/groups/g",
                Call::UserGroup {
                    hub: "chat".into(),
                    user: "u".into(),
                    group: "g".into(),
                    add: false,
                },
            ),
            (
                Method::HEAD,
                "/api/hubs/chat/connections/c/",
                Call::ConnectionExists {
                    hub: "chat".into(),
                    connection: "c".into(),
                },
            ),
            (
                Method::DELETE,
                "/api/hubs/chat/connections/c",
                Call::CloseConnection {
                    hub: "chat".into(),
                    connection: "c".into(),
                },
            ),
            (
                Method::DELETE,
                "/api/hubs/chat/connections/c.node-2/groups",
                Call::ConnectionLeaveAll {
                    hub: "chat".into(),
                    connection: "c.node-2".into(),
                },
            ),
            (
                Method::DELETE,
                "/api/hubs/chat/users/u%201/groups/",
                Call::UserLeaveAll {
                    hub: "chat".into(),
                    user: "u 1".into(),
                },
            ),
        ];
        for (method, path, call) in cases {
            assert_eq!(route(&method, path), Ok(call), "{method} {path}");
        }
    }

    #[test]
    fn wrong_methods_unknown_paths_and_bad_segments_are_refused() {
        assert_eq!(route(&Method::GET, "/api/hubs/chat/:send"), Err(NotACall::Method));
        assert_eq!(route(&Method::POST, "/api/hubs/chat/nothing"), Err(NotACall::NoRoute));
        assert_eq!(route(&Method::POST, "/api/hubs/chat/groups//:send"), Err(NotACall::BadSegment));
        assert_eq!(route(&Method::POST, "/api/hubs/chat/users/%zz/:send"), Err(NotACall::BadSegment));
        assert_eq!(route(&Method::POST, "/api/hubs/chat/users/%ff/:send"), Err(NotACall::BadSegment));
        let long = "g".repeat(MAX_GROUP_NAME + 1);
        assert_eq!(route(&Method::HEAD, &format!("/api/hubs/chat/groups/{long}")), Err(NotACall::LongGroupName));
        assert!(route(&Method::HEAD, &format!("/api/hubs/chat/groups/{}", &long[1..])).is_ok());
        assert_eq!(
            route(&Method::POST, "/api/hubs/chat/users/u/:closeConnections"),
            Ok(Call::CloseUser {
                hub: "chat".into(),
                user: "u".into()
            })
        );
        assert_eq!(route(&Method::PUT, "/api/hubs/chat/users/u/groups"), Err(NotACall::Method));
        assert_eq!(route(&Method::HEAD, "/api/hubs/chat/connections/c/groups"), Err(NotACall::Method));
        assert!(!is_rest_path("/apix/hubs/chat"));
    }

    #[test]
    fn queries_are_read_and_bounded() {
        let parsed = query("api-version=2022-06-01&excluded=a&excluded=b,c&excludedUsers=u&reason=bye%20now");
        assert_eq!(
            parsed,
            Ok(Query {
                application: None,
                excluded: vec!["a".into(), "b".into(), "c".into()],
                excluded_users: vec!["u".into()],
                reason: Some("bye now".into()),
            })
        );
        assert!(matches!(query("api-version=1.0"), Err(QueryError::Version(_))));
        let app = query("application=shop_2&api-version=2022-06-01").map(|parsed| parsed.hub_name("chat"));
        assert_eq!(app, Ok("shop_2_chat".to_owned()));
        assert_eq!(query("").map(|parsed| parsed.hub_name("chat")), Ok("chat".to_owned()));
        for bad in ["2shop", "_shop", "sh-op", "sh%20op", ""] {
            assert!(
                matches!(query(&format!("application={bad}")), Err(QueryError::Application(_))),
                "{bad}"
            );
        }
        let many = (0..=MAX_EXCLUDED).map(|n| format!("excluded={n}")).collect::<Vec<_>>().join("&");
        assert!(matches!(query(&many), Err(QueryError::TooMany { .. })));
    }
}
