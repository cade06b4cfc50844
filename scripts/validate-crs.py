#!/usr/bin/env python3
"""Validates the Prometheus Operator resources in Kubernetes YAML documents
(`kubectl kustomize` output) against the operator's CRD schemas, as the
cloudcoil-models-prometheus-operator package ships them (pydantic models
generated from the CRDs), strictly: a field the schema does not know, a
wrong type or a value outside its pattern or enum fails.
kubernetes-validate checks the built-in kinds; it has no CRD schemas.

usage: validate-crs.py FILE...
"""
import sys

import yaml
from cloudcoil.models.prometheus_operator import v1

KINDS = {"PodMonitor": v1.PodMonitor, "ServiceMonitor": v1.ServiceMonitor,
         "PrometheusRule": v1.PrometheusRule}


def unknown(given, known, path):
    """Paths in `given` that the validated model dropped (unknown fields)."""
    if isinstance(given, dict):
        for k, v in given.items():
            if not isinstance(known, dict) or k not in known:
                yield f"{path}.{k}"
            else:
                yield from unknown(v, known[k], f"{path}.{k}")
    elif isinstance(given, list):
        for i, v in enumerate(given):
            yield from unknown(v, known[i] if isinstance(known, list) and i < len(known) else None,
                               f"{path}[{i}]")


bad = checked = 0
for name in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(name)):
        if not doc or doc.get("kind") not in KINDS:
            continue
        what = f"{name}: {doc['kind']}/{doc.get('metadata', {}).get('name')}"
        try:
            model = KINDS[doc["kind"]].model_validate(doc)
        except Exception as e:  # pydantic.ValidationError
            print(f"{what}: {e}")
            bad += 1
            continue
        dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True)
        extra = list(unknown(doc, dumped, ""))
        if extra:
            print(f"{what}: fields the CRD does not have: {', '.join(extra)}")
            bad += 1
            continue
        checked += 1
        print(f"{what}: valid")
if bad:
    sys.exit(1)
if not checked:
    print("no Prometheus Operator resources found")
