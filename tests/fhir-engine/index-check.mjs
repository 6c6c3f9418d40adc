// Checks `repository.mjs`'s identifier index against Medplum's full scan: the same resources
// stored in both, then searches of every kind the gateway and the tests send (and some they
// do not), each compared by its total and its entries. Exits 1 on any difference, or when the
// index was never used. Run by `tests/tests/fhir_engine.rs`.
//
//   node index-check.mjs
import { parseSearchRequest } from '@medplum/core';
import { MemoryRepository } from '@medplum/fhir-router';
import { ValidatingRepository } from './repository.mjs';

const indexed = new ValidatingRepository();
const scanned = new MemoryRepository();
// Values differing only in case, holding search escapes, spaces and non-ASCII text, and
// values that are the prefix of others.
const values = ['a', 'A', 'cuff%2C1', 'b', 'x y', 'é', 'a|b', 'c,d', 'a\\b', 'ab'];
for (let i = 0; i < 300; i++) {
  const value = values[i % values.length] + (i % 3 ? '' : `-${i % 7}`);
  const system = i % 2 ? 'urn:s1' : 'urn:s2';
  const identifier = i % 11 ? [{ system, value }] : [{ value }, { system: 'urn:s3', value: 'b' }];
  for (const resourceType of ['Observation', 'Device']) {
    const resource =
      resourceType === 'Observation'
        ? { resourceType, status: 'final', code: { text: 't' }, identifier }
        : { resourceType, identifier };
    await indexed.createResource(resource);
    await scanned.createResource(resource);
  }
}
// An update: the old value must no longer be found, the new one must.
for (const repo of [indexed, scanned]) {
  const first = (await repo.search(parseSearchRequest('Device?identifier=urn:s1|b'))).entry[0].resource;
  await repo.updateResource({ ...first, identifier: [{ system: 'urn:s1', value: 'moved' }] });
}

const queries = [
  'identifier=a',
  'identifier=urn:s1|a',
  'identifier=URN:S2|A-0',
  'identifier=|a',
  'identifier=urn:s1|',
  'identifier=urn:s3|b',
  'identifier=cuff%252C1',
  'identifier=a,b',
  'identifier=a%5C%7Cb',
  'identifier=c%5C,d',
  'identifier=a%5C%5Cb',
  'identifier=x%20y',
  'identifier=%C3%A9-3',
  'identifier=%C3%89',
  'identifier:not=a',
  'identifier=zz',
  'identifier=urn:s1|b',
  'identifier=urn:s1|moved',
  // Sorted by what both repositories hold alike: `_lastUpdated` differs between them by the
  // millisecond, and its ties keep insertion order, so it could order the two differently.
  'identifier=a&_sort=-identifier&_count=3&_offset=2&_total=accurate',
  'identifier=b&_id=nothing',
];
let differences = 0;
// Ids are random per repository: a result is its total and its entries' identifiers, in order.
const shape = (bundle) => JSON.stringify([bundle.total, (bundle.entry ?? []).map((e) => e.resource.identifier)]);
for (const type of ['Observation', 'Device']) {
  for (const query of queries) {
    const request = `${type}?${query}`;
    const a = shape(await indexed.search(parseSearchRequest(request)));
    const b = shape(await scanned.search(parseSearchRequest(request)));
    if (a !== b) {
      differences++;
      console.log(`differs: ${request}\n  indexed: ${a.slice(0, 300)}\n  scanned: ${b.slice(0, 300)}`);
    }
  }
}
console.log(`${queries.length * 2} searches compared, ${differences} differ, ${indexed.indexedSearches} used the index`);
if (differences > 0 || indexed.indexedSearches < queries.length) process.exit(1);
