
CREATE TABLE jobs (
    job_id                    text COLLATE "C" PRIMARY KEY,
    status                    text NOT NULL
        CHECK (status IN ('QUEUED', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    report_type               text NOT NULL,
    user_role                 text NOT NULL,
    county_id                 text,
    subject                   text NOT NULL,
    parent_job_ids            text[] NOT NULL DEFAULT '{}',
    trigger_id                text NOT NULL,
    request_data              jsonb NOT NULL DEFAULT '{}',
    priority                  smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 255),
    result_path               text,
    rows_written              bigint NOT NULL DEFAULT 0,
    result_sha256             text,
    progress                  smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    error                     text,
    attempt                   bigint NOT NULL DEFAULT 1,
    max_attempts              bigint NOT NULL DEFAULT 1,
    run_after                 timestamptz,
    cancel_requested          boolean NOT NULL DEFAULT false,
    created_at                timestamptz NOT NULL,
    started_at                timestamptz,
    completed_at              timestamptz,
    estimated_completion_time timestamptz,
    lease_owner               text,
    lease_until               timestamptz,
    version                   bigint NOT NULL DEFAULT 1
);
-- Claims: the next QUEUED jobs, highest priority first, then oldest, ties by id.
CREATE INDEX jobs_claim_idx ON jobs (priority DESC, created_at, job_id) WHERE status = 'QUEUED';
-- Lease sweeps: running jobs by lease end. A job has a lease exactly while it is PROCESSING;
-- the predicate names the lease rather than the status so that the planner never scans this
-- index for "status = 'PROCESSING'" (every running job) when a completion looks up a few jobs
-- by id.
CREATE INDEX jobs_lease_idx ON jobs (lease_until) WHERE lease_until IS NOT NULL;
-- Listing, newest first (scanned backwards).
CREATE INDEX jobs_list_idx ON jobs (created_at, job_id);

CREATE TABLE job_parents (
    parent_id text COLLATE "C" NOT NULL,
    child_id  text COLLATE "C" NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);

-- One row per (join, scope); `pending` maps a parent report type to its newest unconsumed
-- event: {"A": {"newest": "JOB_…", "count": 2}}. Rows are kept when emptied, so that a row
-- lock always has a row to lock.
CREATE TABLE join_state (
    join_id    text NOT NULL,
    user_role  text NOT NULL,
    has_county boolean NOT NULL,
    county_id  text NOT NULL,
    pending    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (join_id, user_role, has_county, county_id)
);

-- `fire`: (schedule, fire time in µs since the epoch); `idem`: (subject, key).
CREATE TABLE unique_keys (
    kind       text NOT NULL,
    part1      text NOT NULL,
    part2      text NOT NULL,
    job_ids    text[] NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (kind, part1, part2)
);

CREATE TABLE schedule_fires (
    schedule  text PRIMARY KEY,
    last_fire timestamptz NOT NULL
);

CREATE TABLE job_counts (
    status text NOT NULL,
    shard  integer NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (status, shard)
);

-- The NOTIFY channel of this schema's queue.
CREATE FUNCTION flowctl_channel() RETURNS text LANGUAGE sql STABLE
    SET search_path FROM CURRENT
    AS $$ SELECT left('flowctl:' || current_schema(), 63) $$;

-- Tells listeners that a statement left jobs QUEUED. The payload names the writing process
-- (`flowctl.instance`, set per connection), which has woken its own dispatcher already.
CREATE FUNCTION flowctl_wake() RETURNS void LANGUAGE sql
    SET search_path FROM CURRENT
    AS $$ SELECT pg_notify(flowctl_channel(), coalesce(current_setting('flowctl.instance', true), '')) $$;

CREATE FUNCTION flowctl_jobs_inserted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts AS c (status, shard, n)
        SELECT r.status, (txid_current() % 64)::integer, count(*)
        FROM new_rows r GROUP BY r.status ORDER BY r.status
        ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    IF EXISTS (SELECT 1 FROM new_rows r WHERE r.status = 'QUEUED') THEN
        PERFORM flowctl_wake();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION flowctl_jobs_updated() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts AS c (status, shard, n)
        SELECT m.status, (txid_current() % 64)::integer, sum(m.d)
        FROM (SELECT r.status, 1 AS d FROM new_rows r
              UNION ALL SELECT r.status, -1 AS d FROM old_rows r) m
        GROUP BY m.status HAVING sum(m.d) <> 0 ORDER BY m.status
        ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    IF EXISTS (SELECT 1 FROM new_rows r JOIN old_rows o USING (job_id)
               WHERE r.status = 'QUEUED' AND o.status <> 'QUEUED') THEN
        PERFORM flowctl_wake();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION flowctl_jobs_deleted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts AS c (status, shard, n)
        SELECT r.status, (txid_current() % 64)::integer, -count(*)
        FROM old_rows r GROUP BY r.status ORDER BY r.status
        ON CONFLICT (status, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION flowctl_jobs_truncated() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM job_counts;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flowctl_jobs_inserted();
CREATE TRIGGER jobs_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flowctl_jobs_updated();
CREATE TRIGGER jobs_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION flowctl_jobs_deleted();
CREATE TRIGGER jobs_truncated AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION flowctl_jobs_truncated();
