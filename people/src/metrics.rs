//! What the people service records through the `metrics` facade: its limits
//! (`natter_limit{limit=...}`, set at start) and each refusal because of one
//! (`natter_limit_rejections_total{limit=...}`), named as in docs/operations.md,
//! "Limits and quotas".

use crate::Config;

/// Contacts per user: LIMIT_REACHED.
pub(crate) const CONTACTS: &str = "contacts";
/// Blocked users per user: LIMIT_REACHED.
pub(crate) const BLOCKS: &str = "blocks";
/// Status updates per user per 24 hours: LIMIT_REACHED.
pub(crate) const STATUSES_PER_DAY: &str = "statuses_per_day";

/// A request was refused because of `limit`.
pub(crate) fn rejected(limit: &'static str) {
    metrics::counter!("natter_limit_rejections_total", "limit" => limit).increment(1);
}

/// Publishes the configured limits, once at start.
pub(crate) fn limits(config: &Config) {
    for (name, value) in [
        (CONTACTS, config.max_contacts),
        (BLOCKS, config.max_blocks),
        (STATUSES_PER_DAY, config.max_statuses_per_day),
    ] {
        metrics::gauge!("natter_limit", "limit" => name).set(f64::from(value));
    }
}
