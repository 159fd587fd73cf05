"""Parses Prometheus text from stdin with prometheus_client's own parser and
prints every sample as JSON lines: {"family", "type", "name", "labels", "value"}.
Exits non-zero (with the parser's error) on text it does not accept."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        print(json.dumps({
            "family": family.name,
            "type": family.type,
            "name": sample.name,
            "labels": sample.labels,
            "value": sample.value,
        }))
