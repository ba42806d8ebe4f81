-- Alerts decided but not yet sent, written in the same transaction as the state change that
-- raised them and deleted once sent: a checker killed in between leaves them to the next one
-- (a restarted process or a new leader), which sends them.
CREATE TABLE alert_outbox (
    monitor_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (monitor_id, at)
);
