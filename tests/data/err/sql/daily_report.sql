-- Yesterday's cases with a benefit of at least :min_amount (a comment: not a placeholder).
SELECT case_id, county_id, benefit_amount
  FROM cases
 WHERE opened_on >= :interval_start
   AND opened_on <  :interval_end
   AND benefit_amount >= :min_amont
