use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::{CutOff, DbOrder, Reckoning, reckon};
use crate::bench::e2e::{
    load::Placed,
    timeline::{Mark, Track},
};

const PREFIX: &str = "e2e-test-1-";
const QUIET: Duration = Duration::from_secs(15);

fn placed(n: usize) -> Vec<Placed> {
    (0..n)
        .map(|i| Placed {
            id: Uuid::now_v7(),
            scheduled: i as u64 * 1_000,
            answered: i as u64 * 1_000 + 500,
        })
        .collect()
}

/// A track whose adapter answered `answers` times.
fn answered(answers: u32) -> Option<Track> {
    let mut track = Track::default();
    track.set(Mark::Consumed, 10);
    for _ in 0..answers {
        track.set(Mark::Answered, 20);
    }
    Some(track)
}

fn stored(order: &Placed, index: usize, state: &str, received: bool) -> DbOrder {
    DbOrder {
        id: order.id,
        idempotency_key: format!("{PREFIX}{index}"),
        state: Some(state.to_owned()),
        received_at: received.then(Utc::now),
        rejections: 0,
        resends: 0,
    }
}

fn run(
    orders: &[Placed],
    tracks: &[Option<Track>],
    found: Vec<DbOrder>,
    cut_off: CutOff,
) -> Reckoning {
    reckon(orders, tracks, true, &[], found, PREFIX, cut_off, QUIET)
}

#[test]
fn every_order_in_one_bucket_balances() {
    let orders = placed(7);
    let mut found: Vec<DbOrder> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| stored(o, i, "ACKNOWLEDGED", true))
        .collect();
    found[1].state = Some("DEAD".to_owned());
    found[1].received_at = None;
    found[2].state = Some("UNROUTABLE".to_owned());
    found[2].received_at = None;
    found[3].state = Some("PENDING".to_owned());
    found[3].received_at = None;
    found[3].rejections = 1;
    found[4].state = Some("SENT".to_owned());
    found[4].received_at = None;
    found[5].state = Some("RETRYING".to_owned());
    found[5].received_at = None;
    found[6].state = Some("UNACKNOWLEDGED".to_owned());
    found[6].received_at = None;
    let mut tracks = vec![answered(0); 7];
    tracks[0] = answered(1);
    let reckoning = run(&orders, &tracks, found, CutOff::Timeout);
    let ledger = &reckoning.ledger;
    assert!(ledger.balanced && !ledger.void, "{ledger:?}");
    assert_eq!(
        (
            ledger.received,
            ledger.dead,
            ledger.unroutable,
            ledger.rejected_rerouted,
            ledger.in_flight,
            ledger.unacknowledged,
            ledger.lost
        ),
        (1, 1, 1, 1, 2, 1, 0),
        "{ledger:?}"
    );
    assert!(reckoning.received_at[0].is_some() && reckoning.received_at[1].is_none());
    assert!(ledger.equation().starts_with("placed 7 = received 1"));
}

#[test]
fn an_order_sent_and_never_answered_is_in_flight_while_the_loop_moves_and_lost_once_it_is_quiet() {
    let orders = placed(2);
    let tracks = [answered(1), answered(0)];
    let found = || {
        vec![
            stored(&orders[0], 0, "ACKNOWLEDGED", true),
            stored(&orders[1], 1, "SENT", false),
        ]
    };
    let moving = run(&orders, &tracks, found(), CutOff::Timeout).ledger;
    assert!(moving.balanced && !moving.void, "{moving:?}");
    assert_eq!(moving.in_flight, 1);

    let quiet = run(&orders, &tracks, found(), CutOff::Quiet).ledger;
    assert!(!quiet.balanced && quiet.void, "{quiet:?}");
    assert_eq!((quiet.lost, quiet.in_flight), (1, 0));
    assert!(
        quiet.void_reasons[0].contains(&orders[1].id.to_string())
            && quiet.void_reasons[0].contains("last step: consumed"),
        "{quiet:?}"
    );
    assert!(quiet.equation().ends_with("LOST 1"));
}

#[test]
fn an_order_missing_from_the_database_or_without_a_dispatch_row_is_lost() {
    let orders = placed(3);
    let tracks = [answered(1), answered(0), answered(0)];
    let mut no_row = stored(&orders[1], 1, "", false);
    no_row.state = None;
    let found = vec![stored(&orders[0], 0, "ACKNOWLEDGED", true), no_row];
    let ledger = run(&orders, &tracks, found, CutOff::Timeout).ledger;
    assert!(ledger.void && !ledger.balanced, "{ledger:?}");
    assert_eq!(ledger.lost, 2, "{ledger:?}");
    assert!(
        ledger
            .void_reasons
            .iter()
            .any(|r| r.contains("row missing"))
    );
    assert!(
        ledger
            .void_reasons
            .iter()
            .any(|r| r.contains("not in the database"))
    );
}

#[test]
fn an_order_taken_twice_or_received_without_an_answer_voids_the_run() {
    let orders = placed(2);
    let found = || {
        vec![
            stored(&orders[0], 0, "ACKNOWLEDGED", true),
            stored(&orders[1], 1, "ACKNOWLEDGED", true),
        ]
    };
    let twice = run(
        &orders,
        &[answered(2), answered(1)],
        found(),
        CutOff::AllConfirmed,
    )
    .ledger;
    assert!(twice.balanced && twice.void, "{twice:?}");
    assert_eq!(twice.answered_twice, 1);

    let unanswered = run(&orders, &[answered(1), None], found(), CutOff::AllConfirmed).ledger;
    assert!(unanswered.void, "{unanswered:?}");
    assert_eq!(unanswered.received_without_answer, 1);
}

#[test]
fn a_stored_order_whose_call_failed_is_counted_and_one_never_placed_voids() {
    let orders = placed(1);
    let stray = Placed {
        id: Uuid::now_v7(),
        scheduled: 0,
        answered: 0,
    };
    let found = vec![
        stored(&orders[0], 0, "ACKNOWLEDGED", true),
        stored(&stray, 1, "ACKNOWLEDGED", true),
    ];
    let failed_call = reckon(
        &orders,
        &[answered(1)],
        true,
        &[1],
        found.clone(),
        PREFIX,
        CutOff::Quiet,
        QUIET,
    );
    assert!(!failed_call.ledger.void, "{:?}", failed_call.ledger);
    assert_eq!(failed_call.ledger.placed_despite_error, 1);

    let never = reckon(
        &orders,
        &[answered(1)],
        true,
        &[],
        found,
        PREFIX,
        CutOff::Quiet,
        QUIET,
    );
    assert!(
        never.ledger.void && !never.ledger.balanced,
        "{:?}",
        never.ledger
    );
    assert_eq!(never.ledger.unknown, 1);
}

#[test]
fn without_the_adapters_answers_loss_still_voids_and_resends_are_counted() {
    let orders = placed(3);
    let mut found = vec![
        stored(&orders[0], 0, "ACKNOWLEDGED", true),
        stored(&orders[1], 1, "ACKNOWLEDGED", true),
    ];
    found[1].resends = 2;
    let unseen = [None, None, None];
    let ledger = reckon(
        &orders,
        &unseen,
        false,
        &[],
        found.clone(),
        PREFIX,
        CutOff::Quiet,
        QUIET,
    )
    .ledger;
    // The third order is nowhere: lost, whatever the observers saw.
    assert!(ledger.void && !ledger.answers_checked, "{ledger:?}");
    assert_eq!((ledger.received, ledger.lost), (2, 1), "{ledger:?}");
    assert_eq!((ledger.resends, ledger.resent_orders), (2, 1));
    assert!(
        ledger
            .void_reasons
            .iter()
            .all(|r| !r.contains("never answered")),
        "{ledger:?}"
    );

    // The same received orders with answers seen and none answered void the run.
    let seen = reckon(
        &orders[..2],
        &unseen[..2],
        true,
        &[],
        found,
        PREFIX,
        CutOff::Quiet,
        QUIET,
    )
    .ledger;
    assert!(seen.void && seen.received_without_answer == 2, "{seen:?}");
}
