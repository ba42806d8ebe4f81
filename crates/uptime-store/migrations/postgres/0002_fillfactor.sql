-- The aggregate and state rows are updated in place many times an hour (an additive upsert per
-- flush). Room left in each page lets Postgres make those heap-only updates and prune the old
-- versions in place, instead of leaving dead rows for autovacuum: the tables stay near their
-- live size.
ALTER TABLE hourly SET (fillfactor = 50);
ALTER TABLE daily SET (fillfactor = 50);
ALTER TABLE monitor_state SET (fillfactor = 50);
