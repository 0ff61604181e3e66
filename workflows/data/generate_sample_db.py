#!/usr/bin/env python3
"""Generates workflows/data/cases.sqlite: a sample case database for the bundled workflow.

Deterministic (fixed seed, fixed anchor dates), so the committed file can be regenerated:

    python3 workflows/data/generate_sample_db.py [PATH] [CASES]

Two years of cases (opened 2025-01-01 .. 2026-12-31) in six counties: each case has an
opened date, a closed date once it is closed (NULL while it is open), a status, a monthly
benefit amount, a household size and a priority flag. Every client name starts with "Fake",
SSNs use the never-issued 9xx area prefix, and some names carry non-ASCII letters so that
reports show they keep them.

Only the Python standard library is used.
"""
import datetime
import os
import random
import sqlite3
import sys

PATH = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "cases.sqlite")
CASES = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
rng = random.Random(20261202)

FIRST = ["Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lu",
         "Mo", "Nia", "Oz", "Pip", "Quin", "Rue", "Sol", "Tam", "Zoë", "Renée", "Jürgen", "Åsa"]
LAST = ["Testperson", "Samplesmith", "Placeholder", "Exampleton", "Mockridge", "Dummyfield",
        "Fakeley", "Stubbins", "Muñoz-Sample", "O'Mockery"]
COUNTIES = [
    ("C01", "Ashford"), ("C02", "Brookvale"), ("C03", "Cedar Hollow"),
    ("C04", "Dunmore"), ("C05", "Elk Ridge"), ("C06", "Fairhaven"),
]
WORKERS = [f"W{n:03d}" for n in range(1, 37)]
START = datetime.date(2025, 1, 1)
DAYS = (datetime.date(2026, 12, 31) - START).days + 1

if os.path.exists(PATH):
    os.remove(PATH)
db = sqlite3.connect(PATH)
db.executescript(
    """
    CREATE TABLE counties (
        county_id TEXT PRIMARY KEY,
        name      TEXT NOT NULL
    );
    CREATE TABLE cases (
        case_id        TEXT PRIMARY KEY,
        county_id      TEXT NOT NULL REFERENCES counties(county_id),
        client_name    TEXT NOT NULL,
        ssn            TEXT NOT NULL,
        date_of_birth  TEXT NOT NULL,   -- YYYY-MM-DD
        case_status    TEXT NOT NULL,   -- OPEN, PENDING, APPROVED, DENIED, CLOSED
        opened_on      TEXT NOT NULL,   -- YYYY-MM-DD
        closed_on      TEXT,            -- YYYY-MM-DD, NULL while open
        benefit_amount REAL NOT NULL,   -- monthly, in dollars, two decimals
        household_size INTEGER NOT NULL,
        priority       INTEGER NOT NULL, -- 0 or 1
        caseworker     TEXT NOT NULL
    );
    CREATE INDEX cases_opened ON cases(opened_on);
    CREATE INDEX cases_closed ON cases(closed_on);
    CREATE INDEX cases_county ON cases(county_id);
    """
)
db.executemany("INSERT INTO counties VALUES (?, ?)", COUNTIES)

rows = []
for i in range(1, CASES + 1):
    county = COUNTIES[rng.randrange(len(COUNTIES))][0]
    name = f"Fake {FIRST[rng.randrange(len(FIRST))]} {LAST[rng.randrange(len(LAST))]}"
    ssn = f"9{rng.randrange(10, 100):02d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"
    dob = datetime.date(rng.randrange(1940, 2010), rng.randrange(1, 13), rng.randrange(1, 29))
    opened = START + datetime.timedelta(days=rng.randrange(DAYS))
    # Most cases close within a year; those whose closing date is past the anchor stay open.
    closed = opened + datetime.timedelta(days=rng.randrange(7, 420))
    if closed > datetime.date(2026, 12, 31) or rng.random() < 0.25:
        closed = None
        status = ["OPEN", "PENDING", "APPROVED"][rng.randrange(3)]
    else:
        status = ["CLOSED", "DENIED"][rng.random() < 0.2]
    amount = round(rng.randrange(5000, 250000) / 100, 2)
    rows.append((
        f"CASE-{i:06d}", county, name, ssn, dob.isoformat(), status, opened.isoformat(),
        closed.isoformat() if closed else None, amount, rng.randrange(1, 8),
        int(rng.random() < 0.1), WORKERS[rng.randrange(len(WORKERS))],
    ))
rows.sort(key=lambda r: (r[6], r[0]))
db.executemany("INSERT INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
db.commit()
db.execute("VACUUM")
db.close()
print(f"{PATH}: {CASES} cases in {len(COUNTIES)} counties", file=sys.stderr)
