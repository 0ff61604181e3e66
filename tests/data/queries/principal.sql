SELECT ':no', "col:no" /* :no */ FROM t WHERE r = :role AND j = :job_id AND t = :trigger
