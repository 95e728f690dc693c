#!/usr/bin/python3
# metrics_parse.py: reads metrics text on stdin with python3-prometheus-client's own parsers and
# prints what they understood, for the C++ tests to check: one line per family
# "family NAME TYPE UNIT", then one per sample "sample NAME{k="v",...} VALUE" (labels sorted,
# values as floats, as the parsers read them). Argument: "openmetrics" (the OpenMetrics parser, strict: it
# refuses text without "# EOF", a counter sample without _total, a bad UNIT) or "prometheus"
# (the Prometheus text format parser). Exit status 1 with the parser's error on stderr.
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as prom_parse


def main():
    fmt = sys.argv[1]
    text = sys.stdin.read()
    parse = om_parse if fmt == "openmetrics" else prom_parse
    try:
        for fam in parse(text):
            print("family %s %s %s" % (fam.name, fam.type, fam.unit or "-"))
            for s in fam.samples:
                labels = ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace('"', '\\"')
                                               .replace("\n", "\\n"))
                                  for k, v in sorted(s.labels.items()))
                print("sample %s{%s} %r" % (s.name, labels, float(s.value)))
    except Exception as e:  # the parsers raise ValueError and others
        print("parse error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
