-- Hushwire server schema on PostgreSQL, version 2: users' reports to the operator
-- (hushwire_store::Controls::file_report). `evidence` holds the messages the reporter
-- chose to disclose, encoded by the server; a report is deleted when the operator
-- closes it. Filing takes a transaction-scoped advisory lock, so ids commit in
-- increasing order and a reader paging by id never skips one.
CREATE TABLE reports (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reporter      TEXT NOT NULL,
    reported      TEXT NOT NULL,
    reason        TEXT NOT NULL,
    evidence      BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX reports_by_reported ON reports (reported);
