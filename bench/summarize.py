"""Summarise a bench/run.sh TSV file as Markdown tables: median and min-max per point."""

import csv
import statistics
import sys
from collections import defaultdict


def spread(values, digits=0):
    """Formats the median with the min-max range of a list of numbers."""
    fmt = f"{{:.{digits}f}}"
    median = fmt.format(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main(path):
    groups = defaultdict(list)
    order = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            key = (row["section"], row["connections"], row["case"], row["system"])
            if key not in groups:
                order.append(key)
            groups[key].append(row)

    sections = []
    for key in order:
        if key[0] not in sections:
            sections.append(key[0])

    for section in sections:
        print(f"\n### {section}\n")
        print("| connections | case | system | requests/s | ratio to first | p50 µs | p99 µs | max µs | server CPU µs/request |")
        print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        baseline = {}
        for key in order:
            if key[0] != section:
                continue
            rows = groups[key]
            rps = [float(row["rps"]) for row in rows]
            point = (key[1], key[2])
            baseline.setdefault(point, statistics.median(rps))
            ratio = statistics.median(rps) / baseline[point] if baseline[point] else 0
            print(
                f"| {key[1]} | {key[2]} | {key[3]} | {spread(rps)} | {ratio:.2f} | "
                f"{spread([float(r['p50_us']) for r in rows])} | {spread([float(r['p99_us']) for r in rows])} | "
                f"{spread([float(r['max_us']) for r in rows])} | "
                f"{spread([float(r['cpu_us_per_request']) for r in rows], 1)} |"
            )


if __name__ == "__main__":
    main(sys.argv[1])
