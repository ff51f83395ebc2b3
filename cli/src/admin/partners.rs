//! `waybill admin partners list|enrol|update|disable` and `waybill admin keys add|list|revoke`:
//! the partners the dispatcher sends to and the keys their reports are signed with.

use std::{path::PathBuf, time::Duration};

use tonic::transport::Channel;
use waybill_proto::v1::{self as pb, dispatch_admin_client::DispatchAdminClient};

use super::{
    connection::{Connection, Target, usage},
    output::{
        Table, duration, fields, impact, or_dash, print_json, timestamp,
        to_proto_duration as to_proto, yes_no,
    },
};

/// `waybill admin partners …`.
#[derive(Debug, clap::Subcommand)]
pub enum PartnersCommand {
    /// Every partner: id, name, enabled, handover deadline, resend budget, topic.
    List,
    /// Create a partner (enabled) and its topic. For a partner that exists, changes only the
    /// fields given and never enables a disabled one (as `update`).
    #[command(alias = "enroll")]
    Enrol(EnrolArgs),
    /// Change only the fields given; --dry-run shows what would change and changes nothing.
    Update(UpdateArgs),
    /// Stop routing to a partner (its routes are skipped; orders go elsewhere or wait); prints
    /// the countries left without a route and the last day's orders that would go elsewhere.
    Disable {
        /// The partner id.
        partner: String,
        /// Show the consequences; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The fields a partner change may set.
#[derive(Debug, clap::Args)]
pub struct PartnerFields {
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// How long after a send the partner must confirm receipt before the order is sent again
    /// (e.g. 10m).
    #[arg(long, value_parser = waybill_service_kit::duration::parse_duration)]
    handover_deadline: Option<Duration>,
    /// How many times an unconfirmed order is sent again before it is flagged UNACKNOWLEDGED
    /// (0: never re-sent).
    #[arg(long)]
    resend_budget: Option<i32>,
}

/// `partners enrol`.
#[derive(Debug, clap::Args)]
pub struct EnrolArgs {
    /// The partner id: lower-case letters, digits and '-' (it names the topic).
    partner: String,
    #[command(flatten)]
    fields: PartnerFields,
}

/// `partners update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The partner id.
    partner: String,
    #[command(flatten)]
    fields: PartnerFields,
    /// Route to the partner again.
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    /// Stop routing to the partner.
    #[arg(long)]
    disable: bool,
    /// Show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `waybill admin keys …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Enrol a partner's Ed25519 public key (from `waybill keys generate`'s `.pub.pem`).
    Add {
        /// The partner.
        #[arg(long)]
        partner: String,
        /// The id tokens name it by (`kid`).
        #[arg(long)]
        key_id: String,
        /// The public key file: SubjectPublicKeyInfo PEM or DER, or the raw 32 bytes.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// A partner's keys, revoked ones too.
    List {
        /// The partner.
        #[arg(long)]
        partner: String,
    },
    /// Refuse tokens signed with a key from now on.
    Revoke {
        /// The partner.
        #[arg(long)]
        partner: String,
        /// The key id.
        #[arg(long)]
        key_id: String,
    },
}

/// Runs a `partners` command.
pub async fn run(
    command: PartnersCommand,
    connection: &Connection,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = DispatchAdminClient::new(connection.channel(Target::Dispatcher).await?);
    let c = connection;
    let partner = match command {
        PartnersCommand::List => {
            let answer = c
                .answer(
                    Target::Dispatcher,
                    "ListPartners",
                    client.list_partners(c.request(pb::ListPartnersRequest {})?),
                )
                .await?;
            if json {
                return print_json(&answer, "waybill.v1.ListPartnersResponse");
            }
            let mut table = Table::new(&[
                "ID",
                "NAME",
                "ENABLED",
                "DEADLINE",
                "RESEND BUDGET",
                "TOPIC",
                "CREATED",
            ]);
            for p in &answer.partners {
                table.row(vec![
                    p.id.clone(),
                    or_dash(&p.display_name),
                    yes_no(p.enabled),
                    duration(p.handover_deadline.as_ref()),
                    p.resend_budget
                        .map_or_else(|| "-".to_owned(), |b| b.to_string()),
                    or_dash(&p.topic),
                    timestamp(p.created_at.as_ref()),
                ]);
            }
            table.print("no partners enrolled");
            return Ok(());
        }
        PartnersCommand::Enrol(args) => {
            let request = pb::EnrollPartnerRequest {
                partner: Some(pb::Partner {
                    id: args.partner,
                    display_name: args.fields.name.unwrap_or_default(),
                    handover_deadline: args.fields.handover_deadline.map(to_proto),
                    resend_budget: args.fields.resend_budget,
                    ..Default::default()
                }),
            };
            c.answer(
                Target::Dispatcher,
                "EnrollPartner",
                client.enroll_partner(c.request(request)?),
            )
            .await?
        }
        PartnersCommand::Update(args) => return update(&mut client, c, args, json).await,
        PartnersCommand::Disable { partner, dry_run } => {
            if dry_run && !json {
                println!("dry run: {partner} as it would be; nothing was changed");
            }
            c.answer(
                Target::Dispatcher,
                "DisablePartner",
                client.disable_partner(c.request(pb::DisablePartnerRequest {
                    partner_id: partner,
                    dry_run,
                })?),
            )
            .await?
        }
    };
    if json {
        return print_json(&partner, "waybill.v1.Partner");
    }
    print!("{}", describe(&partner));
    Ok(())
}

async fn update(
    client: &mut DispatchAdminClient<Channel>,
    c: &Connection,
    args: UpdateArgs,
    json: bool,
) -> anyhow::Result<()> {
    let enabled = match (args.enable, args.disable) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let fields = args.fields;
    if fields.name.is_none()
        && fields.handover_deadline.is_none()
        && fields.resend_budget.is_none()
        && enabled.is_none()
    {
        return Err(usage(
            "nothing to change: give --name, --handover-deadline, --resend-budget, --enable or --disable",
        ));
    }
    let answer = c
        .answer(
            Target::Dispatcher,
            "UpdatePartner",
            client.update_partner(c.request(pb::UpdatePartnerRequest {
                partner_id: args.partner,
                display_name: fields.name,
                handover_deadline: fields.handover_deadline.map(to_proto),
                resend_budget: fields.resend_budget,
                enabled,
                dry_run: args.dry_run,
            })?),
        )
        .await?;
    if json {
        return print_json(&answer, "waybill.v1.UpdatePartnerResponse");
    }
    let verb = if args.dry_run {
        "would change"
    } else {
        "changed"
    };
    for change in &answer.changes {
        println!(
            "{verb} {}: {} -> {}",
            change.field, change.old_value, change.new_value
        );
    }
    if answer.changes.is_empty() {
        println!("nothing to change");
    } else if !answer.applied {
        println!("dry run: nothing was changed");
    }
    if let Some(partner) = &answer.partner {
        print!("{}", describe(partner));
    }
    if let Some(change) = &answer.impact {
        print!("\n{}", impact(change));
    }
    Ok(())
}

/// One partner, field by field (and what disabling it does, from DisablePartner).
fn describe(p: &pb::Partner) -> String {
    let mut text = fields(&[
        ("partner", p.id.clone()),
        ("name", or_dash(&p.display_name)),
        ("enabled", yes_no(p.enabled)),
        ("handover deadline", duration(p.handover_deadline.as_ref())),
        (
            "resend budget",
            p.resend_budget
                .map_or_else(|| "-".to_owned(), |b| b.to_string()),
        ),
        ("topic", or_dash(&p.topic)),
        ("created", timestamp(p.created_at.as_ref())),
    ]);
    if let Some(change) = &p.impact {
        text.push('\n');
        text.push_str(&impact(change));
    }
    text
}

/// Runs a `keys` command.
pub async fn run_keys(
    command: KeysCommand,
    connection: &Connection,
    json: bool,
) -> anyhow::Result<()> {
    let c = connection;
    let key = match command {
        KeysCommand::Add {
            partner,
            key_id,
            public_key,
        } => {
            let bytes = std::fs::read(&public_key)
                .map_err(|error| usage(format!("cannot read {}: {error}", public_key.display())))?;
            let key = waybill_token::keys::verifying_key_from_bytes(&bytes)
                .map_err(|error| usage(format!("{}: {error}", public_key.display())))?;
            let mut client = DispatchAdminClient::new(c.channel(Target::Dispatcher).await?);
            c.answer(
                Target::Dispatcher,
                "AddPartnerKey",
                client.add_partner_key(c.request(pb::AddPartnerKeyRequest {
                    partner_id: partner,
                    key_id,
                    public_key: key.to_bytes().to_vec(),
                })?),
            )
            .await?
        }
        KeysCommand::List { partner } => {
            let mut client = DispatchAdminClient::new(c.channel(Target::Dispatcher).await?);
            let answer = c
                .answer(
                    Target::Dispatcher,
                    "ListPartnerKeys",
                    client.list_partner_keys(c.request(pb::ListPartnerKeysRequest {
                        partner_id: partner,
                    })?),
                )
                .await?;
            if json {
                return print_json(&answer, "waybill.v1.ListPartnerKeysResponse");
            }
            let mut table = Table::new(&["KEY ID", "CREATED", "LAST USED", "REVOKED"]);
            for k in &answer.keys {
                table.row(vec![
                    k.key_id.clone(),
                    timestamp(k.created_at.as_ref()),
                    timestamp(k.last_used_at.as_ref()),
                    timestamp(k.revoked_at.as_ref()),
                ]);
            }
            table.print("no keys enrolled for this partner");
            return Ok(());
        }
        KeysCommand::Revoke { partner, key_id } => {
            let mut client = DispatchAdminClient::new(c.channel(Target::Dispatcher).await?);
            c.answer(
                Target::Dispatcher,
                "RevokePartnerKey",
                client.revoke_partner_key(c.request(pb::RevokePartnerKeyRequest {
                    partner_id: partner,
                    key_id,
                })?),
            )
            .await?
        }
    };
    if json {
        return print_json(&key, "waybill.v1.PartnerKey");
    }
    print!(
        "{}",
        fields(&[
            ("partner", key.partner_id.clone()),
            ("key id", key.key_id.clone()),
            ("created", timestamp(key.created_at.as_ref())),
            ("last used", timestamp(key.last_used_at.as_ref())),
            ("revoked", timestamp(key.revoked_at.as_ref())),
        ])
    );
    Ok(())
}
