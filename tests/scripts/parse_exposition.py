"""Parses a Prometheus text (0.0.4) or OpenMetrics (1.0.0) body from stdin
with the reference parsers of the prometheus-client package and prints one
`name{label="value",...} value` line per sample, labels sorted, so bodies in
both formats can be compared. Exits non-zero on a parse error.

Usage: parse_exposition.py text|openmetrics < body
"""

import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text


def main() -> int:
    fmt = sys.argv[1]
    body = sys.stdin.read()
    parse = parse_openmetrics if fmt == "openmetrics" else parse_text
    for family in parse(body):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            print(f"{sample.name}{{{labels}}} {float(sample.value)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
