//! `waybill bench drain`: how fast one dispatcher drains a full outbox.
