#!/usr/bin/env python3
"""Validates JSON lines against probe's record schema.

usage: validate-records.py SCHEMA [FILE]   (FILE defaults to stdin)
Prints each invalid line with why, and exits 1 if any; 0 otherwise.
"""
import json
import sys

import jsonschema

schema = json.load(open(sys.argv[1]))
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
validator = cls(schema)
src = open(sys.argv[2]) if len(sys.argv) > 2 else sys.stdin
bad = 0
by_type = {}
n = 0
for i, line in enumerate(src, 1):
    if not line.strip():
        continue
    n += 1
    rec = json.loads(line)
    kind = rec.get("type") if isinstance(rec, dict) else None
    if kind in schema["$defs"] and kind not in by_type:
        # The whole schema decides; the branch of the record's own type
        # says why in words a reader can use.
        sub = {k: v for k, v in schema.items() if k != "oneOf"}
        sub["$ref"] = "#/$defs/" + kind
        by_type[kind] = cls(sub)
    if next(validator.iter_errors(rec), None) is not None:
        bad += 1
        if bad <= 5:
            why = by_type[kind].iter_errors(rec) if kind in by_type else validator.iter_errors(rec)
            errs = [jsonschema.exceptions.best_match([e]) for e in list(why)[:5]]
            msgs = "; ".join(f"/{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errs)
            print(f"line {i} ({kind}): {msgs or 'type unknown'}")
print(f"{n - bad}/{n} records valid")
sys.exit(1 if bad else 0)
