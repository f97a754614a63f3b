// HAPI FHIR as a peer for `linkwork-bench --peers`: parse + validate of the same
// ServiceRequests and BaRS message Bundles linkwork reads, timed the way every peer is.
//
//   java -cp 'libs/*:classes' HapiPeer PAYLOAD_DIR WARMUP_SECONDS ROUNDS
//
// PAYLOAD_DIR holds service-requests.ndjson and bundles.ndjson (one payload a line).
// Each payload is checked once (accepted when the validator reports nothing at error
// or fatal), then parse + validate runs over all payloads for WARMUP_SECONDS so the JIT
// has compiled the hot paths, then ROUNDS timed rounds; each round's time over the
// payloads is one per-payload figure, and the median of the rounds is printed as one
// JSON line on stdout.
//
// Parse is FhirContext.forR4().newJsonParser() from the payload's bytes; validate is
// FhirValidator with FhirInstanceValidator (the HL7 instance validator: structure,
// cardinality, invariants, bindings to the base specification's value sets) over
// the support chain HAPI's documentation gives for validating against the core
// specification.

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.parser.IParser;
import ca.uhn.fhir.util.VersionUtil;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationResult;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.ServiceRequest;

public final class HapiPeer {
    private final IParser parser;
    private final FhirValidator validator;
    private final List<String> refusals = new ArrayList<>();
    private final List<String> warnings = new ArrayList<>();

    private HapiPeer() {
        FhirContext context = FhirContext.forR4();
        parser = context.newJsonParser();
        ValidationSupportChain chain = new ValidationSupportChain(
                new DefaultProfileValidationSupport(context),
                new InMemoryTerminologyServerValidationSupport(context),
                new CommonCodeSystemsTerminologyService(context),
                new SnapshotGeneratingValidationSupport(context));
        FhirInstanceValidator instanceValidator = new FhirInstanceValidator(chain);
        // The BaRS Bundles name NHS England's BaRS profile in meta.profile, which is not
        // loaded here (linkwork checks BaRS's rules in code, not against that
        // StructureDefinition either): reported as a warning, as for any profile a
        // validator does not have, rather than HAPI's default error.
        instanceValidator.setErrorForUnknownProfiles(false);
        validator = context.newValidator();
        validator.registerValidatorModule(instanceValidator);
    }

    /** Parse + validate one payload; the result, for the check pass. */
    private ValidationResult readServiceRequest(byte[] payload) {
        IBaseResource resource = parser.parseResource(
                ServiceRequest.class, new String(payload, StandardCharsets.UTF_8));
        return validator.validateWithResult(resource);
    }

    private ValidationResult readBundle(byte[] payload) {
        IBaseResource resource = parser.parseResource(
                Bundle.class, new String(payload, StandardCharsets.UTF_8));
        return validator.validateWithResult(resource);
    }

    private interface Reader {
        ValidationResult read(byte[] payload);
    }

    /** Checks every payload once; returns how many were refused. */
    private int check(String kind, List<byte[]> payloads, Reader reader) {
        int refused = 0;
        for (int index = 0; index < payloads.size(); index++) {
            String error = null;
            try {
                ValidationResult result = reader.read(payloads.get(index));
                for (SingleValidationMessage message : result.getMessages()) {
                    String text = message.getSeverity() + " " + message.getLocationString()
                            + ": " + message.getMessage();
                    boolean isError = message.getSeverity() == ResultSeverityEnum.ERROR
                            || message.getSeverity() == ResultSeverityEnum.FATAL;
                    if (isError && error == null) {
                        error = text;
                    } else if (!isError && index == 0 && warnings.size() < 10) {
                        warnings.add(kind + " " + text);
                    }
                }
            } catch (RuntimeException exception) {
                error = exception.toString();
            }
            if (error != null) {
                refused++;
                if (refusals.size() < 5) {
                    refusals.add(kind + " " + index + ": " + error);
                }
            }
        }
        return refused;
    }

    /** Microseconds per payload of one pass over all of them. */
    private static double pass(List<byte[]> payloads, Reader reader) {
        long started = System.nanoTime();
        for (byte[] payload : payloads) {
            try {
                reader.read(payload);
            } catch (RuntimeException refused) {
                // Counted in the check pass; a refusal still costs its time here.
            }
        }
        return (System.nanoTime() - started) / 1000.0 / payloads.size();
    }

    private static double median(double[] values) {
        double[] sorted = values.clone();
        Arrays.sort(sorted);
        int middle = sorted.length / 2;
        return sorted.length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }

    private static List<byte[]> lines(Path file) throws Exception {
        List<byte[]> payloads = new ArrayList<>();
        for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) {
            if (!line.isBlank()) {
                payloads.add(line.getBytes(StandardCharsets.UTF_8));
            }
        }
        return payloads;
    }

    private static String quote(String text) {
        StringBuilder quoted = new StringBuilder("\"");
        for (char character : text.toCharArray()) {
            switch (character) {
                case '"' -> quoted.append("\\\"");
                case '\\' -> quoted.append("\\\\");
                case '\n' -> quoted.append("\\n");
                case '\r' -> quoted.append("\\r");
                case '\t' -> quoted.append("\\t");
                default -> {
                    if (character < 0x20) {
                        quoted.append(String.format("\\u%04x", (int) character));
                    } else {
                        quoted.append(character);
                    }
                }
            }
        }
        return quoted.append('"').toString();
    }

    private static String array(List<String> texts) {
        List<String> quoted = new ArrayList<>();
        for (String text : texts) {
            quoted.add(quote(text));
        }
        return "[" + String.join(",", quoted) + "]";
    }

    public static void main(String[] arguments) throws Exception {
        Path dir = Path.of(arguments[0]);
        double warmupSeconds = Double.parseDouble(arguments[1]);
        int rounds = Integer.parseInt(arguments[2]);
        List<byte[]> serviceRequests = lines(dir.resolve("service-requests.ndjson"));
        List<byte[]> bundles = lines(dir.resolve("bundles.ndjson"));

        long startup = System.nanoTime();
        HapiPeer peer = new HapiPeer();
        int refusedServiceRequests = peer.check("ServiceRequest", serviceRequests, peer::readServiceRequest);
        int refusedBundles = peer.check("Bundle", bundles, peer::readBundle);
        double checkSeconds = (System.nanoTime() - startup) / 1e9;

        long warmupEnds = System.nanoTime() + (long) (warmupSeconds * 1e9);
        while (System.nanoTime() < warmupEnds) {
            pass(serviceRequests, peer::readServiceRequest);
            pass(bundles, peer::readBundle);
        }
        double[] serviceRequestMicros = new double[rounds];
        double[] bundleMicros = new double[rounds];
        for (int round = 0; round < rounds; round++) {
            serviceRequestMicros[round] = pass(serviceRequests, peer::readServiceRequest);
            bundleMicros[round] = pass(bundles, peer::readBundle);
        }

        System.out.println("{\"peer\":\"hapi-fhir\""
                + ",\"version\":" + quote(VersionUtil.getVersion())
                + ",\"runtime\":" + quote("java " + System.getProperty("java.version"))
                + ",\"validation\":" + quote("FhirInstanceValidator (R4 core profiles, in-memory terminology)")
                + ",\"service_request_us\":" + median(serviceRequestMicros)
                + ",\"bundle_us\":" + median(bundleMicros)
                + ",\"rounds\":" + rounds
                + ",\"service_requests\":" + serviceRequests.size()
                + ",\"bundles\":" + bundles.size()
                + ",\"refused_service_requests\":" + refusedServiceRequests
                + ",\"refused_bundles\":" + refusedBundles
                + ",\"refusals\":" + array(peer.refusals)
                + ",\"warnings\":" + array(peer.warnings)
                + ",\"first_pass_seconds\":" + checkSeconds
                + "}");
    }
}
