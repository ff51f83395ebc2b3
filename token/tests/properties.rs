//! The token parser and binder on arbitrary input: no panic, identifiers that parse are safe to
//! look up and store, every reported field is bound exactly, and no mutation of a valid token
//! is accepted with other claims.

mod common;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::DateTime;
use common::{AUDIENCE, claims, hand_made, now, report, signer};
use proptest::prelude::*;
use serde_json::json;
use waybill_token::{ParsedToken, RejectReason, Report, ReportClaims, verify};

/// Text as an attacker or a careless partner writes it: NUL and other control characters,
/// odd Unicode, long runs, or an ordinary value.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ".{0,40}",
        3 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f}a-z0-9-]{0,20}",
        1 => "[\u{202e}\u{feff}\u{10ffff}\u{e000}\u{e9}\"\\\\]{0,12}",
        1 => (0_usize..300, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
        2 => Just("acme-2026".to_owned()),
    ]
}

fn any_report() -> impl Strategy<Value = Report> {
    (
        proptest::collection::vec(hostile_text(), 7),
        any::<bool>(),
        0_i64..4_000_000_000,
    )
        .prop_map(|(t, action_required, seconds)| Report {
            partner_id: t[0].clone(),
            order_id: t[1].clone(),
            report_id: t[2].clone(),
            status: t[3].clone(),
            tracking_id: t[4].clone(),
            detail: t[5].clone(),
            detail_code: t[6].clone(),
            action_required,
            occurred_at: DateTime::from_timestamp(seconds, 0).expect("in range"),
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn kid_iss_and_jti_that_parse_are_bounded_and_free_of_control_characters(
        kid in hostile_text(),
        iss in hostile_text(),
        jti in hostile_text(),
    ) {
        let mut body = serde_json::to_value(claims()).expect("json");
        body["iss"] = json!(iss);
        body["jti"] = json!(jti);
        let token = hand_made(json!({"alg": "EdDSA", "typ": "wb-report+jwt", "kid": kid}), body);
        match ParsedToken::parse(&token) {
            Ok(parsed) => {
                for (value, max) in [(parsed.key_id(), 64), (parsed.issuer(), 64), (jti.as_str(), 128)] {
                    prop_assert!(!value.is_empty() && value.len() <= max, "{:?}", value);
                    prop_assert!(!value.chars().any(char::is_control), "{:?}", value);
                }
            }
            Err(error) => {
                prop_assert_eq!(error.reason, RejectReason::Malformed);
                prop_assert!(error.detail.len() < 200, "{}", error.detail);
            }
        }
    }

    #[test]
    fn every_reported_field_is_bound_exactly(signed in any_report(), sent in any_report(), pick in 0_usize..9) {
        // The request differs from what was signed in one field (or none): the token verifies
        // exactly when every field is equal.
        let mut request = signed.clone();
        match pick {
            0 => request.partner_id = sent.partner_id,
            1 => request.order_id = sent.order_id,
            2 => request.report_id = sent.report_id,
            3 => request.status = sent.status,
            4 => request.tracking_id = sent.tracking_id,
            5 => request.detail = sent.detail,
            6 => request.detail_code = sent.detail_code,
            7 => request.action_required = sent.action_required,
            _ => request.occurred_at = sent.occurred_at,
        }
        let claims = ReportClaims::new(&signed, AUDIENCE, now(), 120, "j");
        let result = claims.check_bound_to(&request);
        if request == signed {
            prop_assert!(result.is_ok(), "{:?}", result);
        } else {
            let Err(error) = result else {
                return Err(TestCaseError::fail(format!("{request:?} passed for {signed:?}")));
            };
            prop_assert_eq!(error.reason, RejectReason::ClaimMismatch);
            // Two quoted values of at most 64 characters, each escaped in at most 10 bytes.
            prop_assert!(error.detail.len() < 1_500, "{}", error.detail);
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = ParsedToken::parse(&text);
    }

    #[test]
    fn parsing_arbitrary_parts_never_panics(
        header in proptest::collection::vec(any::<u8>(), 0..200),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(body),
            URL_SAFE_NO_PAD.encode(signature)
        );
        if let Ok(parsed) = ParsedToken::parse(&token) {
            let _ = parsed.verify_signature(&signer(1).verifying_key());
        }
    }

    #[test]
    fn mutating_a_valid_token_is_never_accepted(position in 0_usize..400, byte in any::<u8>()) {
        let token = signer(1).sign(&claims());
        let mut bytes = token.clone().into_bytes();
        let index = position % bytes.len();
        prop_assume!(bytes[index] != byte);
        bytes[index] = byte;
        if let Ok(mutated) = String::from_utf8(bytes) {
            // Decoding can map two texts to the same bytes only in the last base64 character's
            // unused bits; whatever verifies must then carry exactly the signed claims.
            if let Ok(claims) = verify(&mutated, &signer(1).verifying_key(), AUDIENCE, &report(), now()) {
                prop_assert_eq!(claims, self::claims());
            }
        }
    }
}
