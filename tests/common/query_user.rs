//! A test hub's users from the `user` query parameter (SignalR's `IUserIdProvider`; with JWT it would be a claim):
//! `Hub::user_id_provider(user_from_query)`. Shared by the test binaries that give their clients users.

/// The value of the request's `user` query parameter, if it has one.
pub fn user_from_query(request: &hubmesh::RequestInfo) -> Option<String> {
    form_urlencoded::parse(request.query.as_bytes())
        .find(|(key, _)| key == "user")
        .map(|(_, value)| value.into_owned())
}
