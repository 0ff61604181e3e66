-- Sums by county and status over the run's window; `:county` is NULL for an all-counties run.
SELECT county_id, status, count(*) AS cases, sum(benefit_amount) AS total
  FROM cases
 WHERE opened_on >= :interval_start_date
   AND opened_on <  :interval_end_date
   AND (:county IS NULL OR county_id = :county)
 GROUP BY county_id, status
