-- One row per county: the caseload at the end of the run's window (opened before it ends and
-- not closed by then), the cases opened and closed within it, and the monthly benefits of the
-- open caseload.
SELECT n.county_id,
       n.name AS county_name,
       COUNT(c.case_id) AS open_caseload,
       COALESCE(ROUND(SUM(c.benefit_amount), 2), 0) AS open_benefits,
       (SELECT COUNT(*) FROM cases AS o
         WHERE o.county_id = n.county_id
           AND o.opened_on >= :interval_start_date AND o.opened_on < :interval_end_date) AS opened,
       (SELECT COUNT(*) FROM cases AS d
         WHERE d.county_id = n.county_id
           AND d.closed_on >= :interval_start_date AND d.closed_on < :interval_end_date) AS closed
  FROM counties AS n
  LEFT JOIN cases AS c
    ON c.county_id = n.county_id
   AND c.opened_on < :interval_end_date
   AND (c.closed_on IS NULL OR c.closed_on >= :interval_end_date)
 WHERE (:county IS NULL OR n.county_id = :county)
 GROUP BY n.county_id, n.name
 ORDER BY n.county_id
