-- The audit trail of the run's window: every case closed in it, how long it was open and who
-- handled it.
SELECT c.case_id,
       c.county_id,
       c.case_status,
       c.opened_on,
       c.closed_on,
       CAST(julianday(c.closed_on) - julianday(c.opened_on) AS INTEGER) AS days_open,
       c.caseworker
  FROM cases AS c
 WHERE c.closed_on >= :interval_start_date
   AND c.closed_on < :interval_end_date
   AND (:county IS NULL OR c.county_id = :county)
 ORDER BY c.closed_on, c.case_id
