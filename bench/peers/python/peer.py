"""fhir.resources (Python, pydantic models) as a peer for `linkwork-bench --peers`.

    python peer.py PAYLOAD_DIR WARMUP_SECONDS ROUNDS

PAYLOAD_DIR holds service-requests.ndjson and bundles.ndjson (one payload a line). Each
payload is checked once (accepted when the model validates it), then parse + validate
runs over all payloads for WARMUP_SECONDS, then ROUNDS timed rounds; each round's time
over the payloads is one per-payload figure, and the median of the rounds is printed
as one JSON line on stdout.

fhir.resources' default package is FHIR R5; its R4B subpackage is the closest to R4 it
ships (R4B changed no ServiceRequest, Patient, MessageHeader or Bundle element these
payloads use), and it is what linkwork's own model is generated from too. Parse +
validate is `model_validate_json` from the payload's bytes: pydantic-core parses the
JSON and checks types, cardinality, required elements and primitive formats as it
builds the model.
"""

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import fhir.resources
from fhir.resources.R4B import __fhir_version__ as fhir_version
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest


def lines(path):
    return [line for line in Path(path).read_bytes().splitlines() if line.strip()]


def check(kind, payloads, model, refusals):
    refused = 0
    for index, payload in enumerate(payloads):
        try:
            model.model_validate_json(payload)
        except Exception as error:  # a refusal of any kind is reported, not raised
            refused += 1
            if len(refusals) < 5:
                refusals.append(f"{kind} {index}: {error}")
    return refused


def one_pass(payloads, model):
    started = time.perf_counter_ns()
    for payload in payloads:
        try:
            model.model_validate_json(payload)
        except Exception:  # counted in the check pass; a refusal still costs its time
            pass
    return (time.perf_counter_ns() - started) / 1000 / len(payloads)


def main():
    directory, warmup_seconds, rounds = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    service_requests = lines(directory / "service-requests.ndjson")
    bundles = lines(directory / "bundles.ndjson")

    refusals = []
    started = time.perf_counter()
    refused_service_requests = check("ServiceRequest", service_requests, ServiceRequest, refusals)
    refused_bundles = check("Bundle", bundles, Bundle, refusals)
    first_pass_seconds = time.perf_counter() - started

    warmup_ends = time.perf_counter() + warmup_seconds
    while time.perf_counter() < warmup_ends:
        one_pass(service_requests, ServiceRequest)
        one_pass(bundles, Bundle)
    service_request_us, bundle_us = [], []
    for _ in range(rounds):
        service_request_us.append(one_pass(service_requests, ServiceRequest))
        bundle_us.append(one_pass(bundles, Bundle))

    print(
        json.dumps(
            {
                "peer": "fhir.resources",
                "version": fhir.resources.__version__,
                "runtime": f"python {platform.python_version()}",
                "validation": f"R4B models (FHIR {fhir_version}), pydantic model_validate_json",
                "service_request_us": statistics.median(service_request_us),
                "bundle_us": statistics.median(bundle_us),
                "rounds": rounds,
                "service_requests": len(service_requests),
                "bundles": len(bundles),
                "refused_service_requests": refused_service_requests,
                "refused_bundles": refused_bundles,
                "refusals": refusals,
                "warnings": [],
                "first_pass_seconds": first_pass_seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
