-- For supervisors: priority cases opened in the run's window that are still undecided.
SELECT c.case_id,
       c.county_id,
       c.client_name,
       c.ssn,
       c.date_of_birth,
       c.case_status,
       c.opened_on,
       c.caseworker,
       c.household_size,
       c.benefit_amount
  FROM cases AS c
 WHERE c.priority = 1
   AND c.case_status IN ('OPEN', 'PENDING')
   AND c.opened_on >= :interval_start_date
   AND c.opened_on < :interval_end_date
   AND (:county IS NULL OR c.county_id = :county)
 ORDER BY c.opened_on, c.case_id
