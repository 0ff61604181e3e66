-- Counts and amounts by county and current status of the cases opened or closed in the run's
-- window: how many were opened, how many closed, and their monthly benefits.
SELECT c.county_id,
       n.name AS county_name,
       c.case_status,
       COUNT(*) AS cases,
       SUM(CASE WHEN c.opened_on >= :interval_start_date AND c.opened_on < :interval_end_date
                THEN 1 ELSE 0 END) AS opened,
       SUM(CASE WHEN c.closed_on >= :interval_start_date AND c.closed_on < :interval_end_date
                THEN 1 ELSE 0 END) AS closed,
       ROUND(SUM(c.benefit_amount), 2) AS benefit_total,
       ROUND(AVG(c.benefit_amount), 2) AS benefit_average
  FROM cases AS c
  JOIN counties AS n ON n.county_id = c.county_id
 WHERE ((c.opened_on >= :interval_start_date AND c.opened_on < :interval_end_date)
     OR (c.closed_on >= :interval_start_date AND c.closed_on < :interval_end_date))
   AND (:county IS NULL OR c.county_id = :county)
   AND c.benefit_amount >= :min_amount
 GROUP BY c.county_id, n.name, c.case_status
 ORDER BY c.county_id, c.case_status
