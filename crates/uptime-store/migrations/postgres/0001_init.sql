-- Uptime history, Postgres. Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE monitors (
    id BIGSERIAL PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    group_name TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    target TEXT NOT NULL DEFAULT '',
    UNIQUE (namespace, name)
);

-- Raw results. The primary key makes a retried batch a no-op and serves the per-monitor range
-- scans (response times, retention); no other index, so writes stay cheap.
CREATE TABLE samples (
    monitor_id BIGINT NOT NULL,
    at BIGINT NOT NULL,
    state SMALLINT NOT NULL,
    success BOOLEAN NOT NULL,
    response_us INTEGER,
    http_status SMALLINT,
    message TEXT,
    PRIMARY KEY (monitor_id, at)
);

-- Per-hour and per-day aggregates, updated in the same transaction as the samples they count.
CREATE TABLE hourly (
    monitor_id BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    up BIGINT NOT NULL, down BIGINT NOT NULL, pending BIGINT NOT NULL, maintenance BIGINT NOT NULL,
    ok BIGINT NOT NULL, rt_count BIGINT NOT NULL, rt_sum_us BIGINT NOT NULL, rt_max_us BIGINT NOT NULL,
    h0 INTEGER NOT NULL DEFAULT 0,
    h1 INTEGER NOT NULL DEFAULT 0,
    h2 INTEGER NOT NULL DEFAULT 0,
    h3 INTEGER NOT NULL DEFAULT 0,
    h4 INTEGER NOT NULL DEFAULT 0,
    h5 INTEGER NOT NULL DEFAULT 0,
    h6 INTEGER NOT NULL DEFAULT 0,
    h7 INTEGER NOT NULL DEFAULT 0,
    h8 INTEGER NOT NULL DEFAULT 0,
    h9 INTEGER NOT NULL DEFAULT 0,
    h10 INTEGER NOT NULL DEFAULT 0,
    h11 INTEGER NOT NULL DEFAULT 0,
    h12 INTEGER NOT NULL DEFAULT 0,
    h13 INTEGER NOT NULL DEFAULT 0,
    h14 INTEGER NOT NULL DEFAULT 0,
    h15 INTEGER NOT NULL DEFAULT 0
    ,PRIMARY KEY (monitor_id, bucket)
);
CREATE INDEX hourly_bucket ON hourly (bucket);

CREATE TABLE daily (
    monitor_id BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    up BIGINT NOT NULL, down BIGINT NOT NULL, pending BIGINT NOT NULL, maintenance BIGINT NOT NULL,
    ok BIGINT NOT NULL, rt_count BIGINT NOT NULL, rt_sum_us BIGINT NOT NULL, rt_max_us BIGINT NOT NULL,
    h0 INTEGER NOT NULL DEFAULT 0,
    h1 INTEGER NOT NULL DEFAULT 0,
    h2 INTEGER NOT NULL DEFAULT 0,
    h3 INTEGER NOT NULL DEFAULT 0,
    h4 INTEGER NOT NULL DEFAULT 0,
    h5 INTEGER NOT NULL DEFAULT 0,
    h6 INTEGER NOT NULL DEFAULT 0,
    h7 INTEGER NOT NULL DEFAULT 0,
    h8 INTEGER NOT NULL DEFAULT 0,
    h9 INTEGER NOT NULL DEFAULT 0,
    h10 INTEGER NOT NULL DEFAULT 0,
    h11 INTEGER NOT NULL DEFAULT 0,
    h12 INTEGER NOT NULL DEFAULT 0,
    h13 INTEGER NOT NULL DEFAULT 0,
    h14 INTEGER NOT NULL DEFAULT 0,
    h15 INTEGER NOT NULL DEFAULT 0
    ,PRIMARY KEY (monitor_id, bucket)
);
CREATE INDEX daily_bucket ON daily (bucket);

CREATE TABLE monitor_state (
    monitor_id BIGINT PRIMARY KEY,
    state SMALLINT NOT NULL,
    since BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    success BOOLEAN NOT NULL,
    response_us INTEGER,
    http_status SMALLINT,
    message TEXT
);

CREATE TABLE incidents (
    id BIGSERIAL PRIMARY KEY,
    monitor_id BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    cause TEXT NOT NULL,
    UNIQUE (monitor_id, started_at)
);
CREATE INDEX incidents_started ON incidents (started_at);
CREATE INDEX incidents_open ON incidents (monitor_id) WHERE ended_at IS NULL;
