// A real FHIR R4 engine for the end-to-end tests: Medplum's FhirRouter over its in-memory
// repository, behind a mutual-TLS HTTPS front end.
//
//   node server.mjs --cert server.pem --key server.key --client-ca ca.pem [--max-body-bytes N]
//
// Prints one JSON line `{"port": N}` on stdout once it listens on 127.0.0.1 (port 0: the
// system picks one), then serves until killed. The FHIR base is `/fhir`.
//
// What is Medplum's and what is this file's:
// - routing, create, search (token search with FHIR escapes), conditional create
//   (`ifNoneExist`), batch and transaction Bundles, and the transaction-size rule (a
//   transaction with conditional creates above 8 entries is refused with 400) are Medplum's
//   `@medplum/fhir-router` and `MemoryRepository`.
// - validation of every created or updated resource against the FHIR R4 StructureDefinitions
//   (an invalid resource is refused 400), in `repository.mjs`.
// - conditional references (`Patient?identifier=system|value` in a transaction, FHIR R4
//   http.html#trules): the Medplum server resolves them in its database repository, which is
//   not part of the router package, so this front end resolves them before the router sees
//   the Bundle: exactly one match replaces the reference, none or several refuse the Bundle
//   (412), as the specification says.
// - `--max-body-bytes`: a request body above it is refused with 413 before it is read whole,
//   like a reverse proxy's body limit in front of a real server.
// - an index of identifier values in front of the repository's searches (`repository.mjs`):
//   Medplum's own matching, sorting and paging still decide what a search finds.
import fs from 'node:fs';
import https from 'node:https';
import { getStatus, OperationOutcomeError, parseSearchRequest } from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import { ValidatingRepository } from './repository.mjs';

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

function outcome(status, text) {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code: status === 412 ? 'conflict' : 'invalid', diagnostics: text }],
  };
}

const repo = new ValidatingRepository();
const router = new FhirRouter();
const maxBody = Number(arg('--max-body-bytes', '0'));
const stats = { requests: 0, bundles: 0, refused: 0, observationEntries: 0 };
const created = [];

class Refused extends Error {
  constructor(status, text) {
    super(text);
    this.status = status;
  }
}

/** Replaces conditional references (`Type?query`) in a transaction with the one match. */
async function resolveConditionalReferences(bundle) {
  const cache = new Map();
  const visit = async (node) => {
    if (Array.isArray(node)) {
      for (const item of node) await visit(item);
      return;
    }
    if (!node || typeof node !== 'object') return;
    for (const [key, value] of Object.entries(node)) {
      if (key === 'reference' && typeof value === 'string' && /^[A-Z][A-Za-z]+\?/.test(value)) {
        let resolved = cache.get(value);
        if (!resolved) {
          const matches = await repo.searchResources(parseSearchRequest(value));
          if (matches.length !== 1) {
            throw new Refused(
              412,
              `conditional reference ${value} matched ${matches.length} resources (needs exactly one)`
            );
          }
          resolved = `${matches[0].resourceType}/${matches[0].id}`;
          cache.set(value, resolved);
        }
        node[key] = resolved;
      } else {
        await visit(value);
      }
    }
  };
  for (const entry of bundle.entry ?? []) {
    if (entry.resource) await visit(entry.resource);
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (maxBody > 0 && size > maxBody) {
        reject(new Refused(413, `request body over ${maxBody} bytes`));
        req.pause();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(res, status, body) {
  const bytes = Buffer.from(JSON.stringify(body));
  res.writeHead(status, {
    'content-type': 'application/fhir+json',
    'content-length': bytes.length,
  });
  res.end(bytes);
}

async function handle(req, res) {
  stats.requests++;
  const url = new URL(req.url, 'https://localhost');
  if (url.pathname === '/_stats') {
    send(res, 200, stats);
    return;
  }
  if (url.pathname === '/_created') {
    // [effectiveDateTime, ms since 1970 when stored] of every Observation created: the
    // benchmark's publish-to-server latency.
    send(res, 200, created);
    return;
  }
  if (!url.pathname.startsWith('/fhir')) {
    send(res, 404, outcome(404, 'not found'));
    return;
  }
  const declared = Number(req.headers['content-length'] ?? '0');
  if (maxBody > 0 && declared > maxBody) {
    stats.refused++;
    send(res, 413, outcome(413, `request body over ${maxBody} bytes`));
    req.resume();
    return;
  }
  const raw = await readBody(req);
  let body;
  if (raw.length > 0) {
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      send(res, 400, outcome(400, 'body is not JSON'));
      return;
    }
  }
  const pathname = url.pathname.slice('/fhir'.length) || '/';
  const query = {};
  for (const [k, v] of url.searchParams) {
    if (k in query) query[k] = [].concat(query[k], v);
    else query[k] = v;
  }
  // Writes one at a time: the in-memory repository's transactions do not isolate, and
  // Medplum's server runs conditional creates in serializable transactions.
  const release = req.method === 'GET' ? () => {} : await writeTurn();
  try {
    return await dispatch(req, res, pathname, url, query, body);
  } finally {
    release();
  }
}

let writes = Promise.resolve();

/** Waits for the writes before this one; resolves to the function that lets the next go. */
function writeTurn() {
  let release;
  const mine = new Promise((r) => (release = r));
  const before = writes;
  writes = before.then(() => mine);
  return before.then(() => release);
}

async function dispatch(req, res, pathname, url, query, body) {
  if (body?.resourceType === 'Bundle' && req.method === 'POST' && pathname === '/') {
    stats.bundles++;
    if (body.type === 'transaction') await resolveConditionalReferences(body);
  }
  const [result, resource] = await router.handleRequest(
    {
      method: req.method,
      url: pathname.slice(1) + url.search,
      body,
      params: {},
      query,
      headers: req.headers,
      config: { transactions: true },
    },
    repo
  );
  const status = getStatus(result);
  if (status >= 400) stats.refused++;
  else if (resource?.resourceType === 'Bundle' && body?.resourceType === 'Bundle') {
    // Observation entries the engine answered 2xx (created, or matched by ifNoneExist).
    (body.entry ?? []).forEach((entry, i) => {
      const answer = resource.entry?.[i]?.response?.status ?? '';
      if (entry.request?.url === 'Observation' && answer.startsWith('2')) {
        stats.observationEntries++;
        if (answer.startsWith('201')) created.push([entry.resource?.effectiveDateTime, Date.now()]);
      }
    });
  }
  send(res, status, resource ?? result);
}

const server = https.createServer(
  {
    cert: fs.readFileSync(arg('--cert')),
    key: fs.readFileSync(arg('--key')),
    ca: fs.readFileSync(arg('--client-ca')),
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    keepAliveTimeout: 30000,
  },
  (req, res) => {
    handle(req, res).catch((err) => {
      if (err instanceof Refused) {
        stats.refused++;
        send(res, err.status, outcome(err.status, err.message));
      } else if (err instanceof OperationOutcomeError) {
        stats.refused++;
        send(res, getStatus(err.outcome), err.outcome);
      } else {
        send(res, 500, outcome(500, String(err?.message ?? err)));
      }
    });
  }
);
server.listen(Number(arg('--port', '0')), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
