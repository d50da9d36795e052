"""Write `samples/hubspot_contacts.xlsx`, byte for byte the same at every run.

HubSpot exports contacts as XLSX: ids as number cells, dates as date cells, multi-value
properties as one text cell with `;` between the values. python-calamine only reads, so the
sample is written with xlsxwriter (a test dependency), its timestamps fixed.

    .venv/bin/python scripts/make_samples.py
"""

from __future__ import annotations

import datetime
from pathlib import Path

import xlsxwriter

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "hubspot_contacts.xlsx"
FIXED = datetime.datetime(2026, 12, 1, 9, 0, 0)
HEADER = [
    "Record ID",
    "Hindsight Interview ID",
    "First Name",
    "Last Name",
    "Email",
    "Job Title",
    "Company Name",
    "Associated Deal",
    "Deal Stage",
    "Lifecycle Stage",
    "Closed Lost Reason",
    "Interview Objective",
    "Notes",
    "Create Date",
]
ROWS = [
    [
        61,
        5111,
        "Nadia",
        "Rahman",
        "nadia@hooli.example",
        "CTO",
        "Hooli",
        "Hooli - Platform;Hooli - Support",
        "closedlost",
        "opportunity",
        "Chose a competitor",
        "Why the platform deal was lost",
        "Two deals; both stalled at security review",
        datetime.date(2026, 9, 3),
    ],
    [
        62,
        5112,
        "Peter",
        "Novak",
        "peter@piedpiper.example",
        "CEO",
        "Pied Piper",
        "Pied Piper - Pilot",
        "closedwon",
        "customer",
        "",
        "What made the pilot convert",
        "",
        datetime.date(2026, 10, 17),
    ],
    [
        63,
        5113,
        "Grace",
        "Adeyemi",
        "grace@vandelay.example",
        "Head of Sales",
        "Vandelay",
        "Vandelay - New",
        "closedlost",
        "opportunity",
        "Price;Timing",
        "",
        "Wants a 2027 budget",
        datetime.date(2026, 11, 2),
    ],
]


def main() -> None:
    book = xlsxwriter.Workbook(str(SAMPLE))
    book.set_properties({"created": FIXED})  # also the zip entries' time: the same bytes each run
    sheet = book.add_worksheet("Contacts")
    date = book.add_format({"num_format": "yyyy-mm-dd"})
    sheet.write_row(0, 0, HEADER)
    for number, row in enumerate(ROWS, start=1):
        *cells, created = row
        sheet.write_row(number, 0, cells)
        sheet.write_datetime(number, len(cells), created, date)
    book.close()
    print(f"wrote {SAMPLE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
