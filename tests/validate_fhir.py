#!/usr/bin/env python3
"""Independent FHIR R4 (4.0.1) validator for what the gateway emits.

Usage:
    python3 tests/validate_fhir.py FILE        # NDJSON (one resource per line), a Bundle,
    python3 tests/validate_fhir.py - < FILE    # or a single resource; '-' or no arg = stdin

Install once (a virtualenv is recommended, because fhir.resources 6.x needs pydantic 1):
    pip install -r tests/requirements.txt

Every resource (each NDJSON line; for a Bundle the Bundle itself, checked without its
entries' resources, and then each entry's resource) is validated with the `fhir.resources`
R4 models (structure, cardinality, primitive formats, choice types, no unknown elements).
Observations get extra checks the models do not make, from the R4 core spec and the FHIR
vital-signs profile:

  all Observations
    - status present and from the required value set
    - every Quantity value (value[x], component value[x]) has a numeric value, UCUM system
      http://unitsofmeasure.org and a code
  vital-signs Observations (meta.profile names a vital-signs profile, or category has
  vital-signs)
    - category has vital-signs from
      http://terminology.hl7.org/CodeSystem/observation-category
    - code has a LOINC coding (system http://loinc.org)
    - effectiveDateTime or effectivePeriod present
    - value[x], dataAbsentReason, component or hasMember present (vs-2)
    - each component has value[x] or dataAbsentReason (vs-3) and a code
  Observations that claim a vital-signs profile in meta.profile
    - subject present (1..1 in the profile)

Output: one line per failure, then `N passed, M failed`. Exit status: 0 if every resource
passed, 1 if any failed or no resource was found, 2 if the validator cannot run (missing
or wrong fhir.resources, unreadable input).
"""

import decimal
import json
import sys

REQUIREMENTS_HINT = "pip install -r tests/requirements.txt"

try:
    import fhir.resources as _fhir
except ImportError as exc:  # pragma: no cover - environment problem
    print(
        f"ERROR: the Python package fhir.resources is not installed ({exc}); "
        f"run: {REQUIREMENTS_HINT}",
        file=sys.stderr,
    )
    sys.exit(2)

# fhir.resources 7+ defaults to R5 and 6.5 to R4B; only <= 6.4 models R4 (4.0.1). A machine
# may well have another version installed: refuse to validate against the wrong release.
FHIR_VERSION = getattr(_fhir, "__fhir_version__", "?")
if FHIR_VERSION != "4.0.1":
    print(
        f"ERROR: the installed fhir.resources {getattr(_fhir, '__version__', '?')} models FHIR "
        f"{FHIR_VERSION}, not R4 4.0.1; run: {REQUIREMENTS_HINT}",
        file=sys.stderr,
    )
    sys.exit(2)

from fhir.resources import construct_fhir_element  # noqa: E402  (after the version check)

CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SD = "http://hl7.org/fhir/StructureDefinition/"
# The R4 vital-signs profile and the profiles derived from it.
VITAL_SIGNS_PROFILES = {
    SD + name
    for name in (
        "vitalsigns",
        "vitalspanel",
        "resprate",
        "heartrate",
        "oxygensat",
        "bodytemp",
        "bodyheight",
        "headcircum",
        "bodyweight",
        "bmi",
        "bp",
    )
}
OBSERVATION_STATUS = {
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
}
VALUE_KEYS = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
)


def codings(concept):
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, dict)]


def has_value(element):
    return any(k in element for k in VALUE_KEYS)


def quantity_problems(q, where):
    problems = []
    if not isinstance(q, dict):
        return [f"{where} is not an object"]
    value = q.get("value")
    if not isinstance(value, (int, float, decimal.Decimal)) or isinstance(value, bool):
        problems.append(f"{where}.value missing or not a number")
    if q.get("system") != UCUM:
        problems.append(f"{where}.system is {q.get('system')!r}, expected {UCUM}")
    if not q.get("code"):
        problems.append(f"{where}.code (UCUM unit code) missing")
    return problems


def observation_problems(obs):
    """Checks beyond the structural model. Returns a list of messages."""
    problems = []
    status = obs.get("status")
    if status is None:
        problems.append("status missing")
    elif status not in OBSERVATION_STATUS:
        problems.append(f"status {status!r} is not in the required value set")

    if "valueQuantity" in obs:
        problems += quantity_problems(obs["valueQuantity"], "valueQuantity")
    components = obs.get("component") or []
    for i, comp in enumerate(components):
        if isinstance(comp, dict) and "valueQuantity" in comp:
            problems += quantity_problems(comp["valueQuantity"], f"component[{i}].valueQuantity")

    profiles = set((obs.get("meta") or {}).get("profile") or [])
    claims_vs = bool(profiles & VITAL_SIGNS_PROFILES)
    categories = [c for cat in obs.get("category") or [] for c in codings(cat)]
    has_vs_category = any(
        c.get("system") == CATEGORY_SYSTEM and c.get("code") == "vital-signs" for c in categories
    )
    if not (claims_vs or has_vs_category):
        return problems

    if not has_vs_category:
        problems.append(f"category lacks vital-signs from {CATEGORY_SYSTEM} (profile claims it)")
    if not any(c.get("system") == LOINC and c.get("code") for c in codings(obs.get("code"))):
        problems.append("code has no LOINC coding")
    if "effectiveDateTime" not in obs and "effectivePeriod" not in obs:
        problems.append("effectiveDateTime or effectivePeriod missing")
    if not (
        has_value(obs) or "dataAbsentReason" in obs or components or obs.get("hasMember")
    ):
        problems.append("no value[x], dataAbsentReason, component or hasMember (vs-2)")
    for i, comp in enumerate(components):
        if not isinstance(comp, dict):
            continue
        if not (has_value(comp) or "dataAbsentReason" in comp):
            problems.append(f"component[{i}] has neither value[x] nor dataAbsentReason (vs-3)")
        if not codings(comp.get("code")) and not (comp.get("code") or {}).get("text"):
            problems.append(f"component[{i}].code missing")
    if claims_vs and not obs.get("subject"):
        problems.append("subject missing (required by the vital-signs profile)")
    return problems


def model_problems(resource):
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return ["resourceType missing"]
    try:
        construct_fhir_element(rtype, resource)
    except Exception as exc:  # pydantic ValidationError, LookupError for unknown types, ...
        return [" ".join(str(exc).split())]
    return []


def label(resource):
    rtype = resource.get("resourceType", "?")
    if resource.get("id"):
        return f"{rtype}/{resource['id']}"
    idents = resource.get("identifier") or []
    if idents and isinstance(idents[0], dict) and idents[0].get("value"):
        return f"{rtype}[identifier={idents[0]['value']}]"
    return rtype


def items(text, source):
    """Yields (where, resource) for every resource in the input."""
    stripped = text.strip()
    if not stripped:
        return
    try:
        whole = json.loads(stripped, parse_float=decimal.Decimal)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        yield from document_items(whole, source)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, parse_float=decimal.Decimal)
        except json.JSONDecodeError as exc:
            yield f"{source}:{lineno}", exc
            continue
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            yield from document_items(value, f"{source}:{lineno}")
        else:
            yield f"{source}:{lineno}", value


def document_items(doc, where):
    if doc.get("resourceType") != "Bundle":
        yield where, doc
        return
    entries = doc.get("entry") or []
    shell = dict(doc)
    shell["entry"] = [
        {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
        for e in entries
    ]
    yield f"{where} Bundle", shell
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            yield f"{where} entry[{i}]", entry["resource"]


def main(argv):
    if len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[1] if len(argv) == 2 else "-"
    try:
        if path == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            with open(path, encoding="utf-8") as f:
                text, source = f.read(), path
    except OSError as exc:
        print(f"ERROR: cannot read {path}: {exc}", file=sys.stderr)
        return 2

    passed = failed = 0
    for where, resource in items(text, source):
        if isinstance(resource, Exception):
            problems, name = [f"not JSON: {resource}"], "?"
        elif not isinstance(resource, dict):
            problems, name = ["not a JSON object"], "?"
        else:
            name = label(resource)
            problems = model_problems(resource)
            if resource.get("resourceType") == "Observation":
                problems += observation_problems(resource)
        if problems:
            failed += 1
            for p in problems:
                print(f"FAIL {where} {name}: {p}")
        else:
            passed += 1
    if passed + failed == 0:
        print(f"FAIL {source}: no resources found")
        failed = 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
