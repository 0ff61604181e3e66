-- For the property tests: the run's window and county (built-ins only).
SELECT * FROM cases
 WHERE opened_on >= :interval_start_date AND opened_on < :interval_end_date
   AND (:county IS NULL OR county_id = :county) -- ':no'
