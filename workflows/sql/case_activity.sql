-- Every case opened or closed in the run's window, with its details: the body of the five
-- periodic reports (daily, weekly, monthly, quarterly, yearly), which differ only in their
-- window. The engine keeps the principal's county and masks by role after this query.
SELECT c.case_id,
       c.county_id,
       c.client_name,
       c.ssn,
       c.date_of_birth,
       c.case_status,
       c.opened_on,
       c.closed_on,
       c.benefit_amount,
       c.household_size,
       c.priority,
       c.caseworker,
       CASE
         WHEN c.closed_on < :interval_start_date OR c.closed_on IS NULL
              OR c.closed_on >= :interval_end_date THEN 'OPENED'
         WHEN c.opened_on < :interval_start_date THEN 'CLOSED'
         ELSE 'OPENED_AND_CLOSED'
       END AS activity
  FROM cases AS c
 WHERE ((c.opened_on >= :interval_start_date AND c.opened_on < :interval_end_date)
     OR (c.closed_on >= :interval_start_date AND c.closed_on < :interval_end_date))
   AND (:county IS NULL OR c.county_id = :county)
   AND (:status = 'ALL' OR c.case_status = :status)
 ORDER BY c.opened_on, c.case_id
