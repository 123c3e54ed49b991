-- Hushwire server schema, version 5: users' reports to the operator
-- (hushwire_store::Controls::file_report). `evidence` holds the messages the reporter
-- chose to disclose, encoded by the server; a report is deleted when the operator
-- closes it.
CREATE TABLE reports (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    reporter      TEXT NOT NULL,
    reported      TEXT NOT NULL,
    reason        TEXT NOT NULL,
    evidence      BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX reports_by_reported ON reports (reported);
