//! A change to a partner, field by field: what an operator asked to change (every other field
//! is kept), the partner it makes, and what changed, old → new, for the answer and the audit
//! trail. Enabling is a field like the others: nothing enables a disabled partner unless the
//! change says so (`EnrollPartner` again never does).

use chrono::{DateTime, Duration, Utc};
use waybill_service_kit::duration::format_duration;

use super::model::PartnerRecord;

/// The fields to change; `None` keeps the partner's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerChange {
    /// A new display name.
    pub display_name: Option<String>,
    /// A new handover deadline.
    pub handover_deadline: Option<Duration>,
    /// A new resend budget.
    pub resend_budget: Option<i32>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// One field changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    /// The field's name in the API (`handover_deadline`, …).
    pub field: &'static str,
    /// Its value before.
    pub old: String,
    /// Its value after.
    pub new: String,
}

impl PartnerChange {
    /// `current` with this change made at `now`, and what changed (empty: nothing; the
    /// partner is then returned as it was, `updated_at` included).
    pub fn apply(
        &self,
        current: &PartnerRecord,
        now: DateTime<Utc>,
    ) -> (PartnerRecord, Vec<FieldChange>) {
        let mut next = current.clone();
        let mut changes = Vec::new();
        let mut note = |field: &'static str, old: String, new: String| {
            if old != new {
                changes.push(FieldChange { field, old, new });
            }
        };
        if let Some(name) = &self.display_name {
            note("display_name", current.display_name.clone(), name.clone());
            next.display_name.clone_from(name);
        }
        if let Some(deadline) = self.handover_deadline {
            note(
                "handover_deadline",
                deadline_text(current.handover_deadline),
                deadline_text(deadline),
            );
            next.handover_deadline = deadline;
        }
        if let Some(budget) = self.resend_budget {
            note(
                "resend_budget",
                current.resend_budget.to_string(),
                budget.to_string(),
            );
            next.resend_budget = budget;
        }
        if let Some(enabled) = self.enabled {
            note("enabled", current.enabled.to_string(), enabled.to_string());
            next.enabled = enabled;
        }
        if !changes.is_empty() {
            next.updated_at = now;
        }
        (next, changes)
    }
}

/// The changes as one audit value: `handover_deadline: 10m -> 5m, enabled: false -> true`, or
/// `nothing`.
pub fn describe(changes: &[FieldChange]) -> String {
    if changes.is_empty() {
        return "nothing".to_owned();
    }
    changes
        .iter()
        .map(|c| format!("{}: {:?} -> {:?}", c.field, c.old, c.new))
        .collect::<Vec<_>>()
        .join(", ")
}

fn deadline_text(deadline: Duration) -> String {
    format_duration(deadline.to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, 10, minute, 0)
            .single()
            .unwrap_or_default()
    }

    fn disabled() -> PartnerRecord {
        PartnerRecord {
            id: "acme".into(),
            display_name: "Acme".into(),
            enabled: false,
            handover_deadline: Duration::minutes(10),
            resend_budget: 5,
            topic: "waybill.partner.acme".into(),
            created_at: at(0),
            updated_at: at(0),
        }
    }

    #[test]
    fn only_the_fields_given_change_and_a_disabled_partner_stays_disabled() {
        let change = PartnerChange {
            handover_deadline: Some(Duration::minutes(5)),
            ..PartnerChange::default()
        };
        let (next, changes) = change.apply(&disabled(), at(1));
        assert!(
            !next.enabled,
            "never enabled by a change that does not say so"
        );
        assert_eq!(next.handover_deadline, Duration::minutes(5));
        assert_eq!(
            (next.display_name.as_str(), next.resend_budget),
            ("Acme", 5)
        );
        assert_eq!(next.updated_at, at(1));
        assert_eq!(
            changes,
            [FieldChange {
                field: "handover_deadline",
                old: "10m".into(),
                new: "5m".into()
            }]
        );
    }

    #[test]
    fn every_changed_field_is_named_old_to_new_and_unchanged_ones_are_not() {
        let change = PartnerChange {
            display_name: Some("Acme Freight".into()),
            handover_deadline: Some(Duration::minutes(10)),
            resend_budget: Some(2),
            enabled: Some(true),
        };
        let (next, changes) = change.apply(&disabled(), at(2));
        assert!(next.enabled);
        assert_eq!(
            describe(&changes),
            r#"display_name: "Acme" -> "Acme Freight", resend_budget: "5" -> "2", enabled: "false" -> "true""#
        );
    }

    #[test]
    fn a_change_to_the_same_values_changes_nothing() {
        let same = PartnerChange {
            resend_budget: Some(5),
            enabled: Some(false),
            ..PartnerChange::default()
        };
        let (next, changes) = same.apply(&disabled(), at(3));
        assert_eq!(next, disabled(), "updated_at kept too");
        assert!(changes.is_empty());
        assert_eq!(describe(&changes), "nothing");
    }
}
