//! Partners and their signing keys: `ListPartners`, `EnrollPartner` (the partner's topic is
//! created first: a partner is saved only once it has somewhere to receive orders; for one
//! enrolled already, a change of the fields given), `UpdatePartner`, `DisablePartner` (both
//! weigh what enabling or disabling does to routing, as a route change is weighed),
//! `AddPartnerKey`, `RevokePartnerKey`, `ListPartnerKeys` (with when each key was last used).

use tracing::info;
use waybill_proto::v1;
use waybill_service_kit::text::quote;

use super::AdminApi;
use crate::{
    convert,
    domain::{
        model::{PartnerKeyRecord, PartnerRecord},
        partner_change::{FieldChange, PartnerChange, describe},
        request,
        route_change::{self, RoutingChange, RoutingImpact},
    },
    error::{DispatchError, NotFound},
    store::StoreError,
};

impl AdminApi {
    pub(super) async fn partners(&self) -> Result<v1::ListPartnersResponse, DispatchError> {
        let partners = self.store.list_partners().await?;
        Ok(v1::ListPartnersResponse {
            partners: partners.into_iter().map(convert::partner).collect(),
        })
    }

    pub(super) async fn enroll(
        &self,
        caller: &str,
        partner: Option<v1::Partner>,
    ) -> Result<v1::Partner, DispatchError> {
        let partner =
            partner.ok_or_else(|| request::InvalidField::new("partner", "is required"))?;
        let id = partner.id.trim().to_owned();
        request::partner_id("partner.id", &id)?;
        request::text("partner.display_name", &partner.display_name, 200)?;
        let handover_deadline = partner
            .handover_deadline
            .map(|deadline| request::handover_deadline(Some(deadline)))
            .transpose()?;
        let resend_budget = partner
            .resend_budget
            .map(|budget| request::resend_budget(Some(budget)))
            .transpose()?;
        let display_name = partner.display_name.trim();
        let topic = self.topic_names.partner_topic(&id);
        // The topic first: a partner is saved only once it has somewhere to receive orders
        // (and enrolling again re-creates it if the broker lost it).
        self.topics.ensure_topic(&topic).await?;
        if let Some(current) = self.partner(&id).await? {
            // Enrolled already: only the fields given change, and a disabled partner stays
            // disabled (UpdatePartner enables it).
            let change = PartnerChange {
                display_name: (!display_name.is_empty()).then(|| display_name.to_owned()),
                handover_deadline,
                resend_budget,
                enabled: None,
            };
            return Ok(self
                .change(caller, "EnrollPartner", &current, &change, false, None)
                .await?
                .0);
        }
        let now = self.clock.now();
        let record = PartnerRecord {
            display_name: if display_name.is_empty() {
                id.clone()
            } else {
                display_name.to_owned()
            },
            id,
            enabled: true,
            handover_deadline: request::handover_deadline(None)?,
            resend_budget: request::resend_budget(None)?,
            topic,
            created_at: now,
            updated_at: now,
        };
        let record = PartnerRecord {
            handover_deadline: handover_deadline.unwrap_or(record.handover_deadline),
            resend_budget: resend_budget.unwrap_or(record.resend_budget),
            ..record
        };
        let partner = convert::partner(self.store.upsert_partner(&record).await?);
        info!(target: "waybill::audit", %caller, rpc = "EnrollPartner", partner_id = %partner.id, "partner enrolled");
        Ok(partner)
    }

    pub(super) async fn update(
        &self,
        caller: &str,
        update: v1::UpdatePartnerRequest,
    ) -> Result<v1::UpdatePartnerResponse, DispatchError> {
        let id = update.partner_id.trim();
        request::partner_id("partner_id", id)?;
        let display_name = match update.display_name.as_deref().map(str::trim) {
            Some("") => {
                return Err(request::InvalidField::new(
                    "display_name",
                    "must not be empty when set",
                )
                .into());
            }
            Some(name) => {
                request::text("display_name", name, 200)?;
                Some(name.to_owned())
            }
            None => None,
        };
        let change = PartnerChange {
            display_name,
            handover_deadline: update
                .handover_deadline
                .map(|deadline| request::handover_deadline(Some(deadline)))
                .transpose()?,
            resend_budget: update
                .resend_budget
                .map(|budget| request::resend_budget(Some(budget)))
                .transpose()?,
            enabled: update.enabled,
        };
        let current = self
            .partner(id)
            .await?
            .ok_or_else(|| NotFound::Partner(id.to_owned()))?;
        // Enabling or disabling changes routing: weighed before it is made.
        let weighed = match change.enabled {
            Some(enabled) if enabled != current.enabled => Some(
                self.weigh(&RoutingChange::PartnerEnabled {
                    partner_id: id.to_owned(),
                    enabled,
                })
                .await?,
            ),
            _ => None,
        };
        let (partner, changes) = self
            .change(
                caller,
                "UpdatePartner",
                &current,
                &change,
                update.dry_run,
                weighed.as_ref().map(|weighed| &weighed.impact),
            )
            .await?;
        Ok(v1::UpdatePartnerResponse {
            partner: Some(partner),
            impact: weighed.map(|weighed| weighed.answer(!update.dry_run)),
            applied: !update.dry_run && !changes.is_empty(),
            changes: changes
                .into_iter()
                .map(|c| v1::FieldChange {
                    field: c.field.to_owned(),
                    old_value: c.old,
                    new_value: c.new,
                })
                .collect(),
        })
    }

    /// Makes `change` to `current` (unless `dry_run`) and adds it to the audit trail, naming
    /// every field changed and, when it enables or disables the partner, its `impact` on
    /// routing.
    async fn change(
        &self,
        caller: &str,
        rpc: &'static str,
        current: &PartnerRecord,
        change: &PartnerChange,
        dry_run: bool,
        impact: Option<&RoutingImpact>,
    ) -> Result<(v1::Partner, Vec<FieldChange>), DispatchError> {
        let (next, changes) = change.apply(current, self.clock.now());
        let saved = if dry_run || changes.is_empty() {
            next
        } else {
            self.store.upsert_partner(&next).await?
        };
        if !dry_run {
            let routing = impact.map_or_else(|| "unchanged".to_owned(), route_change::describe);
            info!(target: "waybill::audit", %caller, rpc, partner_id = %current.id, changed = %describe(&changes), %routing, "partner updated");
        }
        Ok((convert::partner(saved), changes))
    }

    /// The partner `id`, if enrolled.
    async fn partner(&self, id: &str) -> Result<Option<PartnerRecord>, DispatchError> {
        let partners = self.store.list_partners().await?;
        Ok(partners.into_iter().find(|partner| partner.id == id))
    }

    pub(super) async fn disable(
        &self,
        caller: &str,
        request: v1::DisablePartnerRequest,
    ) -> Result<v1::Partner, DispatchError> {
        let id = request.partner_id.trim();
        request::partner_id("partner_id", id)?;
        let weighed = self
            .weigh(&RoutingChange::PartnerEnabled {
                partner_id: id.to_owned(),
                enabled: false,
            })
            .await?;
        let partner = if request.dry_run {
            weighed
                .before
                .partner(id)
                .cloned()
                .map(|partner| PartnerRecord {
                    enabled: false,
                    ..partner
                })
        } else {
            self.store.disable_partner(id, self.clock.now()).await?
        }
        .ok_or_else(|| NotFound::Partner(id.to_owned()))?;
        if !request.dry_run {
            info!(target: "waybill::audit", %caller, rpc = "DisablePartner", partner_id = %id, impact = %route_change::describe(&weighed.impact), "partner disabled");
        }
        Ok(v1::Partner {
            impact: Some(weighed.answer(!request.dry_run)),
            ..convert::partner(partner)
        })
    }

    pub(super) async fn add_key(
        &self,
        caller: &str,
        request: v1::AddPartnerKeyRequest,
    ) -> Result<v1::PartnerKey, DispatchError> {
        let partner_id = request.partner_id.trim().to_owned();
        request::partner_id("partner_id", &partner_id)?;
        let key_id = request.key_id.trim().to_owned();
        request::name("key_id", &key_id)?;
        request::public_key(&request.public_key)?;
        let record = PartnerKeyRecord {
            partner_id: partner_id.clone(),
            key_id: key_id.clone(),
            public_key: request.public_key,
            created_at: self.clock.now(),
            revoked_at: None,
            last_used_at: None,
        };
        let key = match self.store.add_key(&record).await {
            Ok(saved) => convert::key(saved),
            Err(StoreError::MissingReference) => return Err(NotFound::Partner(partner_id).into()),
            Err(StoreError::Duplicate) => {
                return Err(DispatchError::KeyExists { partner_id, key_id });
            }
            Err(other) => return Err(other.into()),
        };
        info!(target: "waybill::audit", %caller, rpc = "AddPartnerKey", partner_id = %key.partner_id, key_id = %key.key_id, "partner key added");
        Ok(key)
    }

    pub(super) async fn revoke_key(
        &self,
        caller: &str,
        request: v1::RevokePartnerKeyRequest,
    ) -> Result<v1::PartnerKey, DispatchError> {
        let partner_id = request.partner_id.trim();
        let key_id = request.key_id.trim();
        info!(target: "waybill::audit", %caller, rpc = "RevokePartnerKey", partner_id = %quote(partner_id), key_id = %quote(key_id), "partner key revocation requested");
        request::partner_id("partner_id", partner_id)?;
        request::name("key_id", key_id)?;
        let key = self
            .store
            .revoke_key(partner_id, key_id, self.clock.now())
            .await?
            .ok_or_else(|| NotFound::Key {
                partner_id: partner_id.to_owned(),
                key_id: key_id.to_owned(),
            })?;
        Ok(convert::key(key))
    }

    pub(super) async fn keys(
        &self,
        partner_id: &str,
    ) -> Result<v1::ListPartnerKeysResponse, DispatchError> {
        let partner_id = partner_id.trim();
        request::partner_id("partner_id", partner_id)?;
        let keys = self.store.list_keys(partner_id).await?;
        if keys.is_empty()
            && !self
                .store
                .list_partners()
                .await?
                .iter()
                .any(|p| p.id == partner_id)
        {
            return Err(NotFound::Partner(partner_id.to_owned()).into());
        }
        Ok(v1::ListPartnerKeysResponse {
            keys: keys.into_iter().map(convert::key).collect(),
        })
    }
}
