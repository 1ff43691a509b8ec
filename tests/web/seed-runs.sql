-- seed-runs.sql - :n finished runs for the status page's scale checks
-- (tests/test_web.c, bench/web.sh), inserted straight into a stopped
-- otacd's otacd.db (schema: orchestrator/store.c).  Run i has pipeline
-- p(i mod 7), ref main / dev / a tag v0.0.i (i mod 3), state failed
-- (i mod 10 = 0), canceled (= 1) or passed, one minute apart, newest last.
INSERT INTO runs (pipeline, file, yaml, ref, commit_id, state, trigger, created_at, started_at, finished_at, message, author)
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n)
SELECT 'p' || (i % 7), 'p.yml', 'name: p', 
       CASE i % 3 WHEN 0 THEN 'refs/heads/main' WHEN 1 THEN 'refs/heads/dev' ELSE 'refs/tags/v0.0.' || i END,
       printf('%040x', i * 2654435761),
       CASE i % 10 WHEN 0 THEN 'failed' WHEN 1 THEN 'canceled' ELSE 'passed' END,
       'api', 1700000000000 + i * 60000, 1700000000000 + i * 60000 + 1000, 1700000000000 + i * 60000 + 61000,
       'seeded run ' || i || char(10) || 'body', 'Seed <seed@example.com>'
FROM seq;
