#!/usr/bin/env python3
"""Generates tests/data/csv_workflow/data/cases.csv: obviously fake case records.

Deterministic (fixed seed), so the committed file can be regenerated
byte-for-byte:  python3 tests/data/csv_workflow/data/generate_cases.py [ROWS] > cases.csv
Names are drawn from a fictional list, SSNs use the never-issued 9xx area
prefix, and every client name starts with "Fake".
"""
import random
import sys

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 12000
rng = random.Random(20261129)

FIRST = ["Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lu",
         "Mo", "Nia", "Oz", "Pip", "Quin", "Rue", "Sol", "Tam"]
LAST = ["Testperson", "Samplesmith", "Placeholder", "Exampleton", "Mockridge", "Dummyfield",
        "Fakeley", "Stubbins"]
STATUSES = ["OPEN", "PENDING", "APPROVED", "DENIED", "CLOSED"]
COUNTIES = ["C01", "C02", "C03", "C04", "C05", "C06"]

out = sys.stdout
out.write("case_id,county_id,client_name,ssn,date_of_birth,case_status,opened_on,benefit_amount\n")
for i in range(1, ROWS + 1):
    county = COUNTIES[rng.randrange(len(COUNTIES))]
    name = f"Fake {FIRST[rng.randrange(len(FIRST))]} {LAST[rng.randrange(len(LAST))]}"
    ssn = f"9{rng.randrange(10, 100):02d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"
    dob = f"{rng.randrange(1940, 2010)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    status = STATUSES[rng.randrange(len(STATUSES))]
    opened = f"{rng.randrange(2015, 2027)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    amount = f"{rng.randrange(5000, 250000) / 100:.2f}"
    out.write(f"CASE-{i:06d},{county},{name},{ssn},{dob},{status},{opened},{amount}\n")
