-- The open caseload now: every case not yet closed (the system scheduler's county report).
SELECT c.case_id,
       c.county_id,
       c.client_name,
       c.ssn,
       c.date_of_birth,
       c.case_status,
       c.opened_on,
       c.caseworker,
       c.benefit_amount
  FROM cases AS c
 WHERE c.closed_on IS NULL
   AND (:county IS NULL OR c.county_id = :county)
 ORDER BY c.opened_on, c.case_id
