//! What the groups service records through the `metrics` facade: its limits
//! (`natter_limit{limit=...}`, set at start) and each refusal because of one
//! (`natter_limit_rejections_total{limit=...}`), named as in docs/operations.md,
//! "Limits and quotas".

use crate::rules::Limits;

/// Members per group (owner included): GROUP_FULL.
pub(crate) const GROUP_MEMBERS: &str = "group_members";
/// Requests to join waiting for approval per group: GROUP_FULL.
pub(crate) const GROUP_PENDING_JOINS: &str = "group_pending_joins";
/// Live invite links per group: INVALID_ARGUMENT.
pub(crate) const GROUP_INVITES: &str = "group_invites";
/// Users banned per group: INVALID_ARGUMENT.
pub(crate) const GROUP_BANS: &str = "group_bans";
/// Groups a user is a member of: LIMIT_REACHED.
pub(crate) const GROUPS_PER_USER: &str = "groups_per_user";

/// A change was refused because of `limit`.
pub(crate) fn rejected(limit: &'static str) {
    metrics::counter!("natter_limit_rejections_total", "limit" => limit).increment(1);
}

/// Publishes the configured limits, once at start.
pub(crate) fn limits(limits: &Limits) {
    for (name, value) in [
        (GROUP_MEMBERS, f64::from(limits.max_members)),
        (GROUP_PENDING_JOINS, limits.max_pending_joins as f64),
        (GROUP_INVITES, limits.max_invites as f64),
        (GROUP_BANS, limits.max_banned as f64),
        (GROUPS_PER_USER, f64::from(limits.max_groups_per_user)),
    ] {
        metrics::gauge!("natter_limit", "limit" => name).set(value);
    }
}
