/// What a flag is evaluated against: the Unleash context of one request.
#[derive(Debug, Clone, Copy)]
pub struct FlagContext<'a> {
    /// The session id; the stickiness key of every rollout.
    pub session_id: &'a str,
    /// The application's user id (`X-User-Id`), else the session id.
    pub user_id: &'a str,
    /// This node's id.
    pub node: &'a str,
    /// This node's region.
    pub region: &'a str,
}
