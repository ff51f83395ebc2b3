-- Where the latest send of an order landed on its partner's topic: the partition and offset the
-- broker's acknowledgement named (the produce's delivery report). Written by the relay with the
-- rest of the row when a send or re-send is acknowledged; NULL for rows sent before this
-- migration (and rows not sent yet). The handover deadline scan compares it with the partner's
-- consumer group (committed offset, the log's bounds, live members) to tell a partner that is
-- behind from one that is gone (see the dispatcher's domain/cycle/handover.rs).
ALTER TABLE dispatch ADD COLUMN sent_partition INTEGER;
ALTER TABLE dispatch ADD COLUMN sent_offset INTEGER;
