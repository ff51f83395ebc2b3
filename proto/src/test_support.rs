//! For the contract tests: the field numbers `kafka.proto` and `common.proto` give a message
//! (read from the compiled descriptors), and the field numbers an encoded message holds.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use prost_types::FileDescriptorSet;

/// Field name → number of message `name` of package `waybill.v1`, as the `.proto` files say.
pub fn field_numbers(name: &str) -> BTreeMap<String, u32> {
    let set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let message = set
        .file
        .iter()
        .filter(|file| file.package() == "waybill.v1")
        .flat_map(|file| &file.message_type)
        .find(|message| message.name() == name)
        .unwrap_or_else(|| panic!("no message {name} in waybill.v1"));
    message
        .field
        .iter()
        .map(|field| {
            let number = u32::try_from(field.number()).expect("positive field number");
            (field.name().to_owned(), number)
        })
        .collect()
}

/// The field numbers present at the top level of an encoded message.
pub fn fields_present(mut bytes: &[u8]) -> BTreeSet<u32> {
    let mut present = BTreeSet::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        present.insert(u32::try_from(key >> 3).expect("field number"));
        match key & 7 {
            0 => {
                varint(&mut bytes);
            }
            1 => bytes = &bytes[8..],
            2 => {
                let len = usize::try_from(varint(&mut bytes)).expect("length");
                bytes = &bytes[len..];
            }
            5 => bytes = &bytes[4..],
            wire => panic!("unexpected wire type {wire}"),
        }
    }
    present
}

fn varint(bytes: &mut &[u8]) -> u64 {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let (byte, rest) = bytes.split_first().expect("truncated varint");
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    value
}
