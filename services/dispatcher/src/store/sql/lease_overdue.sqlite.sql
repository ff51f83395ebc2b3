-- Leases up to $5 SENT rows whose handover deadline passed by $4, for owner $1 until $2 with
-- batch id $3. One guarded UPDATE, as for due rows.
UPDATE dispatch SET lease_owner = $1, lease_expires_at = $2, batch_id = $3, updated_at = $4
WHERE order_id IN (
    SELECT order_id FROM dispatch
    WHERE state = 'SENT'
      AND ack_due_at <= $4
      AND (lease_expires_at IS NULL OR lease_expires_at <= $4)
    ORDER BY ack_due_at
    LIMIT $5)
RETURNING order_id
